"""``napari-cnnvision segment``: batch instance segmentation of image files.

Output names: ``DIR/<stem>.tif`` (labels) and ``DIR/<stem>.csv`` (one row per object) when the
input's stem is unique among the inputs; inputs that share a stem (``a.png``, ``a.tif``) keep their
whole file name instead (``a.png.tif``, ``a.png.csv``, ``a.tif.tif``, ...). Outputs that would
overwrite an input, or two inputs that would still write one output (the same file name in two
folders), are refused before anything is written.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ._outputs import output_stems


class OutputConflict(ValueError):
    """The output names of a batch would overwrite an input or collide."""


def add_parser(sub):
    p = sub.add_parser("segment", help="segment images; writes DIR/<stem>.tif (labels) and DIR/<stem>.csv",
                       description="Instance segmentation of image files or folders. Writes DIR/<stem>.tif "
                                   "(labels) and DIR/<stem>.csv (objects); inputs sharing a stem (a.png, a.tif) "
                                   "keep their file name (a.png.tif, a.png.csv). Outputs that would overwrite "
                                   "an input are refused. Images whose outputs already exist are skipped "
                                   "(use --overwrite to redo them).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=None, help="registry name or model folder (default: the shipped default)")
    p.add_argument("--prob-thresh", type=float, default=None, help="default: the model's optimized threshold")
    p.add_argument("--nms-thresh", type=float, default=None, help="default: the model's optimized threshold")
    p.add_argument("--tiles", default="auto", help="'auto', 'none' or one count per spatial axis, e.g. 2,2")
    p.add_argument("--pmin", type=float, default=None,
                   help="low percentile for normalization (default: the model's normalization (its card))")
    p.add_argument("--pmax", type=float, default=None,
                   help="high percentile for normalization (default: the model's normalization (its card))")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the image's 8 flips/90-degree turns (about 8x slower)")
    p.add_argument("--axes", default=None, help="axis order, e.g. YX, YXC, ZYX, TYX (default: guessed)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from ..scaleout import add_cluster_arguments

    add_cluster_arguments(p)
    from ..scaleout.large import BLOCK_PIXELS_ENV, DEFAULT_BLOCK, DEFAULT_BLOCK_PIXELS, LABEL_FORMATS

    p.add_argument("--blocks", type=int, default=None, metavar="N",
                   help="segment a large 2-D image in N x N blocks (with overlap, objects stitched across the "
                        "borders) into DIR/<stem>.zarr (OME-Zarr labels) and DIR/<stem>.csv. Without it, zarr "
                        f"inputs and 2-D TIFFs of more than {_pixels(DEFAULT_BLOCK_PIXELS)} pixels go block-wise by "
                        f"themselves, in blocks of {DEFAULT_BLOCK} ({BLOCK_PIXELS_ENV} sets the threshold)")
    p.add_argument("--format", choices=LABEL_FORMATS, default=None,
                   help="labels of the images segmented block-wise: zarr (OME-Zarr, the default) or tif (a tiled "
                        "TIFF); images segmented whole always give a TIFF")
    p.set_defaults(func=run)


def _pixels(n: int) -> str:
    side = round(n ** 0.5)
    return f"{side} x {side}" if side * side == n else f"{n:,}"


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


def _file_id(p: Path):
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def plan_outputs(files: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """``(labels .tif, table .csv)`` for each input; :class:`OutputConflict` when an output would
    overwrite an input (the same file, also through a link) or two inputs would write one output."""
    plan = [(out / f"{s}.tif", out / f"{s}.csv") for s in output_stems(files)]
    seen: dict[str, Path] = {}
    for f, (tif, _) in zip(files, plan):
        key = tif.name.casefold()  # on case-insensitive file systems a.TIF and a.tif are one file
        if key in seen:
            raise OutputConflict(f"{seen[key]} and {f} would write the same output name {tif.name} in {out}; "
                                 "segment them into separate --out folders")
        seen[key] = f
    inputs = {i: f for f in files if (i := _file_id(f)) is not None}
    for tif, csv in plan:
        for p in (tif, csv):
            hit = inputs.get(_file_id(p))
            if hit is not None:
                raise OutputConflict(f"the output {p} would overwrite the input {hit}; choose another --out folder")
    return plan


class WriteFailed(Exception):
    """Writing one image's results failed (the message names the file and the reason)."""


def write_outputs(res, tif: Path, csv: Path) -> None:
    """Both outputs, or (on an error) neither of the files this call began to write."""
    from ..core import io, tables

    done = []
    try:
        for path, write, data in ((tif, io.write_tiff, res.labels), (csv, tables.write_table, res.table)):
            try:
                write(path, data)
            except OSError as exc:
                raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
            done.append(path)
    except BaseException:
        for p in done:  # no new labels beside an old or a missing table
            try:
                p.unlink()
            except OSError:
                pass
        raise


def run(args) -> int:
    from ..scaleout import wants_cluster

    if getattr(args, "blocks", None):  # block by block into OME-Zarr
        from functools import partial

        from ..scaleout.blockwise import segment_files_blockwise

        if wants_cluster(args):  # each window a Dask task, stitched here in order: the same outputs
            from ..scaleout.cluster_blocks import segment_files_on_cluster

            segment_files_blockwise = partial(segment_files_on_cluster, workers=args.workers,
                                              scheduler=args.scheduler)
        norm = {k: getattr(args, k) for k in ("pmin", "pmax") if getattr(args, k) is not None}
        _, _, failed, _ = segment_files_blockwise(
            args.images, args.out, args.model, block=args.blocks, overwrite=args.overwrite, quiet=args.quiet,
            fmt=args.format or "zarr", prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
            n_tiles=parse_tiles(args.tiles), tta=args.tta, **norm)
        return 1 if failed else 0

    if wants_cluster(args):  # a Dask cluster: one task per image, the same outputs
        from ..scaleout import run_batch

        norm = {k: getattr(args, k) for k in ("pmin", "pmax") if getattr(args, k) is not None}
        s = run_batch("segment", args.images, args.out, args.model, workers=args.workers, scheduler=args.scheduler,
                      overwrite=args.overwrite, quiet=args.quiet, debug=getattr(args, "debug", False),
                      axes=args.axes, prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
                      n_tiles=parse_tiles(args.tiles), tta=args.tta, **norm)
        return 1 if s.failed else 0

    from .. import api
    from ..core.images import read_image
    from ..core.registry import ModelRegistry
    from ..scaleout import large
    from .progress import TerminalProgress

    registry = ModelRegistry()
    card = registry.get(args.model) if args.model else registry.default("segment")
    tiles = parse_tiles(args.tiles)
    out = Path(args.out)
    files = large.expand(args.images)  # zarr folders are images too
    if not files:
        raise ValueError("no input images found")
    plan = plan_outputs(files, out)  # before anything is written
    threshold = large.block_threshold()
    blockwise_of = [large.goes_blockwise(f, threshold) for f in files]  # too large to load whole: block by block
    inputs = {f.resolve() for f in files}
    for f, (tif, _), big in zip(files, plan, blockwise_of):
        if big and large.labels_path(tif, args.format or "zarr").resolve() in inputs:
            raise OutputConflict(f"the output {large.labels_path(tif, args.format or 'zarr')} would overwrite the "
                                 "input of that name; choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    norm = {k: getattr(args, k) for k in ("pmin", "pmax") if getattr(args, k) is not None}  # else the card's
    debug = getattr(args, "debug", False)
    done = skipped = failed = 0
    for i, (f, (tif, csv)) in enumerate(zip(files, plan)):
        blockwise = blockwise_of[i]
        if blockwise:
            tif = large.labels_path(tif, args.format or "zarr")
        if tif.exists() and csv.exists() and not args.overwrite:
            skipped += 1
            continue
        bar = TerminalProgress(f"[{i + 1}/{len(files)}] {f.name}", enabled=not args.quiet)
        try:
            if blockwise:
                try:
                    table = large.segment_one(f, tif, csv, card, large.DEFAULT_BLOCK, progress=bar,
                                              prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
                                              n_tiles=tiles, tta=args.tta, **norm)
                finally:
                    bar.close()
                if not args.quiet:
                    print(f"{f.name}: {len(table['label'])} objects -> {tif} (block-wise, blocks of "
                          f"{large.DEFAULT_BLOCK})", file=sys.stderr)
                done += 1
                continue
            try:
                image = read_image(f)
                res = api.segment(image, card, axes=args.axes, prob_thresh=args.prob_thresh,
                                  nms_thresh=args.nms_thresh, n_tiles=tiles, tta=args.tta, progress=bar,
                                  registry=registry, **norm)
            finally:
                bar.close()
            write_outputs(res, tif, csv)
        except Exception as exc:  # this image fails; the batch goes on
            if debug:
                import traceback

                traceback.print_exc()
            print(f"napari-cnnvision: {f}: {_message(exc)}", file=sys.stderr)
            failed += 1
            continue
        for w in res.warnings:
            print(f"napari-cnnvision: {f.name}: warning: {w}", file=sys.stderr)
        if not args.quiet:
            print(f"{f.name}: {res.n_objects} objects -> {tif}", file=sys.stderr)
        done += 1
    print(f"segmented {done}, skipped {skipped} (already done), failed {failed}; model {card.name}")
    return 1 if failed else 0


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
