"""``napari-cnnvision convert``: annotations from one format into another.

``SRC`` is a COCO JSON file, a folder of Pascal VOC XMLs (or a dataset folder with ``annotations/``),
a YOLO folder (``labels/`` + ``classes.txt`` or ``data.yaml``) or a boxes CSV. ``--to coco`` writes
``DIR/annotations.json`` (``file_name`` = the image's base name), ``--to yolo`` ``DIR/labels/<stem>.txt`` +
``DIR/classes.txt``, ``--to voc`` ``DIR/<stem>.xml``, ``--to csv`` ``DIR/boxes.csv``. ``--images`` says
where the images are when the output needs sizes the source lacks (YOLO and CSV sources, COCO/YOLO
outputs). A non-empty ``DIR`` is refused without ``--force``; an output that would overwrite ``SRC``
always. Every file is written atomically.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.formats.annotations import FORMATS, OUTPUT_NAMES


def add_parser(sub):
    p = sub.add_parser("convert", help="convert annotations between COCO, YOLO, Pascal VOC and CSV",
                       description="Convert annotations: SRC (a COCO JSON file, a folder of VOC XMLs, a YOLO folder "
                                   "or a boxes CSV image,class,xmin,ymin,xmax,ymax[,score]) into --to FORMAT "
                                   "in --out DIR.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--to", required=True, choices=FORMATS, dest="to")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="folder of the images, for the sizes a format needs (default: images/ beside SRC)")
    p.add_argument("--masks", choices=["rle", "polygon"], default="rle",
                   help="how instance masks are written into COCO (default: rle, exact)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=run)


def planned_outputs(ds, fmt: str, out: Path) -> list[Path]:
    """The files :func:`~napari_cnnvision.core.formats.annotations.write_annotations` will write."""
    from ..core.formats.annotations import split_frames

    if fmt in OUTPUT_NAMES:
        return [out / OUTPUT_NAMES[fmt]]
    stems = [a.stem for a in split_frames(ds).images]
    if fmt == "voc":
        return [out / f"{s}.xml" for s in stems]
    return [out / "labels" / f"{s}.txt" for s in stems] + [out / "classes.txt"]


def _source_files(src: Path) -> list[Path]:
    return [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run(args) -> int:
    from ..core.formats.annotations import read_annotations, write_annotations

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise FileNotFoundError(f"no such file or folder: {src}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} is not empty; use --force to write into it")
    ds = read_annotations(src, images=args.images)
    plan = planned_outputs(ds, args.to, out)
    sources = _source_files(src)
    hits = [p for p in plan if p.exists() and any(_same(p, s) for s in sources)]
    if hits:
        raise ValueError(f"writing {args.to} into {out} would overwrite the source ({hits[0]}); choose another --out")
    for w in ds.warnings:
        print(f"warning: {w}", file=sys.stderr)
    written = write_annotations(ds, args.to, out, mask_format=args.masks)
    what = written[0] if len(written) == 1 else f"{len(written)} files in {out}"
    print(f"wrote {what} ({args.to}): {ds.summary()}")
    return 0
