"""``napari-cnnvision models [list | add PATH | check PATH | export NAME --to DIR]``: list the
models, install a bioimage.io package into the user model folder, run a package's own test
tensors, write a U-Net or StarDist model as a bioimage.io package."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ..core.registry import CorruptModel, ModelRegistry, write_card


def _list_args(p) -> None:
    p.add_argument("--json", action="store_true", help="print name, task, backend, source, classes and path as JSON")
    p.add_argument("--task", choices=["segment", "detect", "localize"])


def add_parser(sub, list_func) -> None:
    """Register ``models`` (``list`` is the default subcommand) on the main parser's ``sub``."""
    m = sub.add_parser("models", help="list the available models (default), add or check a bioimage.io package")
    _list_args(m)
    m.set_defaults(func=list_func)
    ms = m.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    lp = ms.add_parser("list", help="list the available models")
    _list_args(lp)
    lp.set_defaults(func=list_func)
    a = ms.add_parser("add", help="install a bioimage.io model package (folder or .zip) into the user model folder")
    a.add_argument("path", help="the package: a folder with bioimageio.yaml / rdf.yaml, or its .zip")
    a.add_argument("--name", default=None, help="the name to list it under (default: from the package's name)")
    a.add_argument("--force", action="store_true", help="replace a user model of the same name")
    a.set_defaults(func=_cmd_add)
    c = ms.add_parser("check", help="run a bioimage.io package's own test tensors here and report pass/fail")
    c.add_argument("path", help="a package folder / .zip, or the name of an added package")
    c.add_argument("--weights", default=None, choices=["torchscript", "pytorch_state_dict", "onnx", "keras_hdf5"],
                   help="check only this weights format (default: every one the package has as a file)")
    c.add_argument("--json", action="store_true", help="print the results as JSON")
    c.set_defaults(func=_cmd_check)
    e = ms.add_parser("export", help="write a U-Net or 2-D StarDist model as a bioimage.io package folder")
    e.add_argument("name", help="a U-Net or StarDist model's registry name or folder")
    e.add_argument("--to", required=True, metavar="DIR", help="the package folder to write")
    e.add_argument("--test-image", default=None, metavar="IMAGE",
                   help="the image for the package's test tensors (default: the bundled 2-D nuclei sample)")
    e.add_argument("--force", action="store_true", help="replace DIR if it exists")
    e.set_defaults(func=_cmd_export)


def _copy_package(src: Path, dest: Path) -> None:
    """The package's files into ``dest`` (writable copies; a zip is extracted, refusing unsafe names)."""
    if src.is_dir():
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_dir() or any(part.startswith(".") for part in rel.parts):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / rel)
        return
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            rel = Path(info.filename)
            if rel.is_absolute() or ".." in rel.parts:
                raise CorruptModel(f"{src}: unsafe file name {info.filename!r} in the zip; not installing it")
            if info.is_dir():
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as fin, open(dest / rel, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def add_package(path: str | os.PathLike, name: str | None = None, force: bool = False,
                registry: ModelRegistry | None = None):
    """Install the package at ``path`` as a user model; returns its card. The package is read,
    mapped and its weights' sha256 checked before anything is copied. A StarDist package is
    installed as a StarDist model folder (its config, thresholds and weights at the top)."""
    from ..backends.bioimageio.package import load_package, mapping, package_card, slug, verified_weights
    from ..core.io import staged_dir

    src = Path(path).expanduser()
    descr, _ = load_package(src)  # validated with bioimageio.spec
    card = package_card(src, "user", validate=True)  # a StarDist package: its weights' sha256 is checked here
    stardist = card.backend != "bioimageio"
    if not stardist:
        mapping(descr, str(src))
        verified_weights(descr, None, str(src))
    name = slug(name) if name else card.name
    registry = registry or ModelRegistry()
    dest = registry.user_dir / name
    if dest.exists() and not force:
        raise CorruptModel(f"a user model named {name!r} exists already ({dest}); pass --force to replace it")
    with staged_dir(dest) as tmp:
        _copy_package(src, tmp)
        if stardist:  # the StarDist folder files (written from config.stardist for StarDist's own layout)
            for f in ("config.json", "thresholds.json", "weights_best.h5"):
                if not (tmp / f).is_file():
                    shutil.copyfile(Path(card.path) / f, tmp / f)
        card.name, card.path = name, None
        write_card(card, tmp)  # listing reads this JSON card; bioimageio.spec only when the model runs
    return registry.get(name)


def _cmd_add(args) -> int:
    card = add_package(args.path, args.name, args.force)
    print(f"added {card.name!r} ({card.task}, {card.backend}) at {card.path}")
    return 0


def _cmd_check(args) -> int:
    from ..backends.bioimageio.check import check_package
    from ..backends.bioimageio.package import is_package

    path = args.path
    if not is_package(path):
        card = ModelRegistry().get(path)
        if (card.backend != "bioimageio" and "bioimageio" not in card.extra) or not card.path:
            raise CorruptModel(f"model {card.name!r} is not a bioimage.io package")
        path = card.path
    results = check_package(path, args.weights)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.weights:<18}  {r.message}")
    return 0 if all(r.passed for r in results) else 1


def _cmd_export(args) -> int:
    from ..backends.bioimageio.export import export_model

    card = ModelRegistry().get(args.name)
    dest = Path(args.to)
    if dest.exists() and not args.force:
        raise CorruptModel(f"{dest} exists already; pass --force to replace it")
    image = None
    if args.test_image:
        from ..core.images import read_image

        image = read_image(args.test_image)
    export_model(card, dest, image, overwrite=args.force)
    print(f"exported {card.name!r} to {dest} (bioimageio.spec: valid; its test tensors: PASS)")
    return 0
