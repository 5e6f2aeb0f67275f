"""``napari-cnnvision segment``: batch instance segmentation of image files."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("segment", help="segment images; writes DIR/<stem>.tif (labels) and DIR/<stem>.csv",
                       description="Instance segmentation of image files or folders. Images whose outputs "
                                   "already exist are skipped (use --overwrite to redo them).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=None, help="registry name or model folder (default: the shipped default)")
    p.add_argument("--prob-thresh", type=float, default=None, help="default: the model's optimized threshold")
    p.add_argument("--nms-thresh", type=float, default=None, help="default: the model's optimized threshold")
    p.add_argument("--tiles", default="auto", help="'auto', 'none' or one count per spatial axis, e.g. 2,2")
    p.add_argument("--pmin", type=float, default=1.0, help="low percentile for normalization (default 1)")
    p.add_argument("--pmax", type=float, default=99.8, help="high percentile for normalization (default 99.8)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the image's 8 flips/90-degree turns (about 8x slower)")
    p.add_argument("--axes", default=None, help="axis order, e.g. YX, YXC, ZYX, TYX (default: guessed)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_tiles(text: str):
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    if t in ("none", "1"):
        return None
    try:
        return tuple(int(v) for v in t.split(","))
    except ValueError:
        raise ValueError(f"--tiles must be 'auto', 'none' or numbers like 2,2 (got {text!r})") from None


def run(args) -> int:
    from .. import api
    from ..core.images import expand_inputs, read_image
    from ..core.tables import write_table
    from ..core.io import write_tiff
    from ..core.registry import ModelRegistry
    from .progress import TerminalProgress

    registry = ModelRegistry()
    card = registry.get(args.model) if args.model else registry.default("segment")
    tiles = parse_tiles(args.tiles)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(args.images)
    if not files:
        raise ValueError("no input images found")
    done = skipped = failed = 0
    for i, f in enumerate(files):
        tif, csv = out / f"{f.stem}.tif", out / f"{f.stem}.csv"
        if tif.exists() and csv.exists() and not args.overwrite:
            skipped += 1
            continue
        bar = TerminalProgress(f"[{i + 1}/{len(files)}] {f.name}", enabled=not args.quiet)
        try:
            image = read_image(f)
            res = api.segment(image, card, axes=args.axes, prob_thresh=args.prob_thresh,
                              nms_thresh=args.nms_thresh, pmin=args.pmin, pmax=args.pmax, n_tiles=tiles,
                              tta=args.tta, progress=bar, registry=registry)
        except Exception as exc:
            bar.close()
            print(f"napari-cnnvision: {f}: {exc}", file=sys.stderr)
            failed += 1
            continue
        bar.close()
        write_tiff(tif, res.labels)
        write_table(csv, res.table)
        for w in res.warnings:
            print(f"napari-cnnvision: {f.name}: warning: {w}", file=sys.stderr)
        if not args.quiet:
            print(f"{f.name}: {res.n_objects} objects -> {tif}", file=sys.stderr)
        done += 1
    print(f"segmented {done}, skipped {skipped} (already done), failed {failed}; model {card.name}")
    return 1 if failed else 0
