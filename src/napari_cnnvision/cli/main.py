"""Entry point of the ``napari-cnnvision`` command."""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from ..core.axes import InputError
from ..core.registry import CorruptModel, ModelNotFound, ModelRegistry


def _cmd_models(args) -> int:
    cards = ModelRegistry().list(args.task)
    if args.json:
        print(json.dumps([{"name": c.name, "task": c.task, "backend": c.backend, "source": c.source,
                           "classes": c.classes, "path": c.path} for c in cards], indent=2))
        return 0
    if not cards:
        print("no models")
        return 0
    w = max(len(c.name) for c in cards)
    for c in cards:
        where = c.path or "(not downloaded)"
        print(f"{c.name:<{w}}  {c.task:<8}  {c.backend:<11}  {c.source:<10}  {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import evaluate, segment
    from . import localize
    from . import detect
    from . import convert
    from . import models_cmd
    from . import train

    p = argparse.ArgumentParser(
        prog="napari-cnnvision",
        description="CNN segmentation, detection and localization for microscopy images "
                    "(the backends of the napari-cnnvision plugin, for batch work).")
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of errors (before the command: napari-cnnvision --debug segment ...)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    models_cmd.add_parser(sub, _cmd_models)  # models [list | add PATH | check PATH | export NAME]
    segment.add_parser(sub)
    detect.add_parser(sub)
    evaluate.add_parser(sub)
    localize.add_parser(sub)
    convert.add_parser(sub)
    train.add_parser(sub)
    d = sub.add_parser("demo", help="segment the bundled nuclei sample and write results + a preview PNG")
    d.add_argument("--out", default="demo-output")
    d.add_argument("--model", default=None)
    d.set_defaults(func=_cmd_demo)
    return p


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, args.model)


def _version() -> str:
    from .. import __version__

    return f"napari-cnnvision {__version__}"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except (InputError, ModelNotFound, CorruptModel, FileNotFoundError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        print(f"napari-cnnvision: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("\nnapari-cnnvision: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear one-line message; the traceback with --debug
        if debug:
            traceback.print_exc()
        print(f"napari-cnnvision: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
