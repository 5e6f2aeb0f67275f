"""``napari-cnnvision localize``: the one object of each image file and its class.

Writes ``DIR/localizations.csv`` with one row per image: ``image`` (the input's file name),
``class``, ``score`` (the probability of that class) and the box ``xmin, ymin, xmax, ymax`` in
pixels (x the column, y the row). A stack (time-lapse) gives one row per frame and the table a
``frame`` column. An ``--out`` whose table would overwrite an input is refused before anything
runs; an image that fails is reported and the batch goes on (exit status 1 at the end).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ._outputs import same_file

TABLE_NAME = "localizations.csv"
COLUMNS = ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"]


def add_parser(sub):
    p = sub.add_parser("localize", help=f"find the one object of each image and its class; writes DIR/{TABLE_NAME}",
                       description="Single-object localization of image files or folders: one box and class per "
                                   f"image (per frame of a stack). Writes DIR/{TABLE_NAME} with the columns "
                                   + ",".join(COLUMNS) + " (pixels; x = column, y = row).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=None, help="registry name or model folder (default: the shipped localizer)")
    p.add_argument("--axes", default=None, help="axis order, e.g. YX, YXC, TYX (default: guessed)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over the 4 mirror flips")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from ..scaleout import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=run)


def rows_of(name: str, res) -> list[dict]:
    """CSV rows of one image's :class:`LocalizationResult` (one per box)."""
    rows = []
    for k in range(res.n_objects):
        y0, x0, y1, x1 = (float(v) for v in res.boxes[k])
        row = {"image": name, "class": res.class_names[int(res.class_ids[k])], "score": f"{res.scores[k]:.4f}",
               "xmin": f"{x0:.1f}", "ymin": f"{y0:.1f}", "xmax": f"{x1:.1f}", "ymax": f"{y1:.1f}"}
        if res.has_frames:
            row["frame"] = int(res.frame[k])
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    from ..core.io import atomic_write_text

    columns = COLUMNS + (["frame"] if any("frame" in r for r in rows) else [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run(args) -> int:
    from ..scaleout import wants_cluster

    if wants_cluster(args):  # a Dask cluster: one task per image, the same table
        from ..scaleout import run_batch

        s = run_batch("localize", args.images, args.out, args.model, workers=args.workers, scheduler=args.scheduler,
                      quiet=args.quiet, debug=getattr(args, "debug", False), axes=args.axes, tta=args.tta)
        return 1 if s.failed else 0

    from .. import api
    from ..core.images import expand_inputs, read_image
    from ..core.registry import ModelRegistry
    from .progress import TerminalProgress

    registry = ModelRegistry()
    card = registry.get(args.model) if args.model else registry.default("localize")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    files = expand_inputs(args.images)
    if not files:
        raise ValueError("no input images found")
    table = out / TABLE_NAME
    for f in files:
        if same_file(f, table) or same_file(f, out):
            raise ValueError(f"the output {table} would overwrite the input {f}; choose another --out folder")
    debug = getattr(args, "debug", False)
    rows: list[dict] = []
    failed = 0
    for i, f in enumerate(files):
        bar = TerminalProgress(f"[{i + 1}/{len(files)}] {f.name}", enabled=not args.quiet)
        try:
            try:
                res = api.localize(read_image(f), card, axes=args.axes, tta=args.tta, progress=bar, registry=registry)
            finally:
                bar.close()
        except Exception as exc:  # this image fails; the batch goes on
            if debug:
                import traceback

                traceback.print_exc()
            print(f"napari-cnnvision: {f}: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
            failed += 1
            continue
        for w in res.warnings:
            print(f"napari-cnnvision: {f.name}: warning: {w}", file=sys.stderr)
        rows.extend(rows_of(f.name, res))
    out.mkdir(parents=True, exist_ok=True)
    write_rows(table, rows)
    print(f"localized {len(files) - failed}, failed {failed}; model {card.name} -> {table}")
    return 1 if failed else 0
