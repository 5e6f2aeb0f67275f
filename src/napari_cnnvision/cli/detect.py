"""``napari-cnnvision detect``: objects, their classes and scores in image files.

Writes, in ``--out DIR``:

* ``DIR/<stem>.csv`` per image (``--format csv``): one row per box, columns
  ``image,class,score,xmin,ymin,xmax,ymax`` (+ ``frame`` for stacks), pixels with x the column;
* ``DIR/detections.json`` (``--format coco``): one COCO dict for the whole batch -- ``images``
  (id, file_name = the input's base name, width, height), ``categories`` (id, name) and
  ``annotations`` (id, image_id, category_id, bbox ``[x, y, width, height]``, area, score).

Both by default. Images already done (their outputs exist) are skipped unless ``--overwrite``;
the COCO file keeps the earlier images of the same model's classes. An ``--out`` whose outputs
would overwrite an input is refused before anything runs; an image that fails is reported and
the batch goes on (exit status 1 at the end).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ._outputs import output_stems, same_file

COCO_NAME = "detections.json"
FORMATS = ("csv", "coco")


def add_parser(sub):
    p = sub.add_parser("detect", help=f"detect objects; writes DIR/<stem>.csv (boxes) and DIR/{COCO_NAME} (COCO)",
                       description="Object detection in image files or folders: boxes with a class and a score. "
                                   "Writes DIR/<stem>.csv per image (image,class,score,xmin,ymin,xmax,ymax; "
                                   f"pixels, x = column) and DIR/{COCO_NAME}, a COCO dict of the whole batch. "
                                   "Images already done are skipped (use --overwrite to redo them).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=None, help="registry name or model folder (default: the shipped detector)")
    p.add_argument("--score-thresh", type=float, default=None, help="lowest score kept (default: the model's)")
    p.add_argument("--nms-thresh", type=float, default=None,
                   help="boxes of a class overlapping more than this IoU are merged (default: the model's)")
    p.add_argument("--format", action="append", choices=FORMATS, default=None,
                   help="output format; repeat for both (default: csv and coco)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile images larger than this many pixels (default: the model's input size; 0: never)")
    p.add_argument("--axes", default=None, help="axis order, e.g. YX, YXC, TYX (default: guessed)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from ..scaleout import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=run)


def plan_outputs(files: list[Path], out: Path, formats) -> list[Path | None]:
    """The CSV path of each input (``None`` without ``csv``); refuses outputs that would
    overwrite an input and inputs whose base names clash in the COCO file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    csvs = [out / f"{s}.csv" for s in output_stems(files)] if "csv" in formats else [None] * len(files)
    outputs = [p for p in csvs if p is not None] + ([out / COCO_NAME] if "coco" in formats else [])
    for f in files:
        for o in outputs:
            if same_file(f, o) or f.resolve() == o.resolve():
                raise ValueError(f"the output {o} would overwrite the input {f}; choose another --out folder")
    seen: dict[str, Path] = {}
    for f in files:
        key = f.name.casefold()
        if key in seen:
            raise ValueError(f"{seen[key]} and {f} have the same file name, which names images in {COCO_NAME} "
                             "and the tables; detect them into separate --out folders")
        seen[key] = f
    return csvs


def _previous(path: Path, class_names: list[str], overwrite: bool) -> dict:
    """The earlier run's COCO entries by file name (``{}`` with --overwrite or no file)."""
    from ..core.formats import coco

    if overwrite or not path.is_file():
        return {}
    try:
        d = coco.load(path)
        names = coco.category_names(d)
        per = coco.per_image(d)
    except ValueError as exc:
        raise ValueError(f"{path} cannot be read back ({exc}); use --overwrite or another --out") from None
    if names != list(class_names):
        raise ValueError(f"{path} holds detections of the classes {names}, not this model's {list(class_names)}; "
                         "use --overwrite or another --out folder")
    ids = {img["file_name"]: img["id"] for img in d["images"]}
    rows: dict = {}
    for a in d["annotations"]:
        rows.setdefault(a["image_id"], []).append(a)
    for name, entry in per.items():  # written again as read: re-deriving them from the rounded boxes drifts
        entry["annotations"] = rows.get(ids[name], [])
    return per


def coco_entry(name: str, res) -> dict:
    """One image's entry of the batch's COCO file (see :func:`write_coco`)."""
    h, w = res.image_shape
    return {"image": {"file_name": name, "width": w, "height": h}, "boxes": res.boxes,
            "class_ids": res.class_ids, "scores": res.scores, "frame": res.frame if res.has_frames else None}


def write_coco(path: Path, entries: dict, class_names: list[str]) -> None:
    """The COCO file of ``entries`` (file name -> :func:`coco_entry`), images sorted by name. An
    entry read back from an earlier file (:func:`_previous`: it holds that file's ``annotations``)
    keeps those annotations as they were written (only their ids renumbered), so a re-run changes
    no earlier image's boxes in their last digits."""
    from ..core.formats import coco
    from ..core.io import atomic_write_text

    names = sorted(entries)
    images = [coco.image_entry(k + 1, n, entries[n]["image"]["height"], entries[n]["image"]["width"])
              for k, n in enumerate(names)]
    anns: list[dict] = []
    for img, n in zip(images, names):
        e = entries[n]
        if e.get("annotations") is not None:
            first = len(anns) + 1
            anns.extend([{**a, "id": first + k, "image_id": img["id"]} for k, a in enumerate(e["annotations"])])
        else:
            anns.extend(coco.annotations_for(img["id"], e["boxes"], e["class_ids"], e.get("scores"), e.get("frame"),
                                             first_id=len(anns) + 1))
    d = {"images": images, "categories": coco.categories(class_names), "annotations": anns}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(d) + "\n")


def run(args) -> int:
    from ..scaleout import wants_cluster

    if wants_cluster(args):  # a Dask cluster: one task per image, the same outputs
        from ..scaleout import run_batch

        s = run_batch("detect", args.images, args.out, args.model, workers=args.workers, scheduler=args.scheduler,
                      overwrite=args.overwrite, formats=args.format, quiet=args.quiet,
                      debug=getattr(args, "debug", False), axes=args.axes, score_thresh=args.score_thresh,
                      nms_thresh=args.nms_thresh, tile_size=args.tile_size)
        return 1 if s.failed else 0

    from .. import api
    from ..backends.dispatch import job_for
    from ..core.formats import boxtable
    from ..core.images import expand_inputs, read_image
    from ..core.registry import ModelRegistry
    from .progress import TerminalProgress

    registry = ModelRegistry()
    card = registry.get(args.model) if args.model else registry.default("detect")
    job_for(card, task="detect")  # a model of another task is refused before the batch
    formats = tuple(dict.fromkeys(args.format or FORMATS))
    out = Path(args.out)
    files = expand_inputs(args.images)
    if not files:
        raise ValueError("no input images found")
    csvs = plan_outputs(files, out, formats)  # before anything is written
    coco_path = out / COCO_NAME
    previous = _previous(coco_path, card.classes, args.overwrite) if "coco" in formats and card.classes else {}
    debug = getattr(args, "debug", False)
    entries: dict[str, dict] = {}  # file name -> {"image": coco image entry, boxes ...}
    class_names = list(card.classes)
    done = skipped = failed = 0
    try:
        for i, (f, csv_path) in enumerate(zip(files, csvs)):
            have_csv = csv_path is None or csv_path.exists()
            have_coco = "coco" not in formats or f.name in previous
            if have_csv and have_coco and not args.overwrite:
                if f.name in previous:
                    entries[f.name] = previous[f.name]
                skipped += 1
                continue
            bar = TerminalProgress(f"[{i + 1}/{len(files)}] {f.name}", enabled=not args.quiet)
            try:
                try:
                    res = api.detect(read_image(f), card, axes=args.axes, score_thresh=args.score_thresh,
                                     nms_thresh=args.nms_thresh, tile_size=args.tile_size, progress=bar,
                                     registry=registry)
                finally:
                    bar.close()
                if csv_path is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    boxtable.write_rows(csv_path, boxtable.rows_of(f.name, res), frames=res.has_frames)
            except Exception as exc:  # this image fails; the batch goes on
                if debug:
                    import traceback

                    traceback.print_exc()
                print(f"napari-cnnvision: {f}: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
                failed += 1
                continue
            class_names = list(res.class_names)
            entries[f.name] = coco_entry(f.name, res)
            for warning in res.warnings:
                print(f"napari-cnnvision: {f.name}: warning: {warning}", file=sys.stderr)
            if not args.quiet:
                counts = ", ".join(f"{k} {v}" for k, v in res.counts().items() if v) or "nothing"
                print(f"{f.name}: {res.n_objects} objects ({counts})", file=sys.stderr)
            done += 1
    finally:  # also after Ctrl-C: what is done is kept
        if "coco" in formats and (done or previous):
            write_coco(coco_path, {**previous, **entries}, class_names)
    where = f" -> {out}" if done else ""
    print(f"detected {done}, skipped {skipped} (already done), failed {failed}; model {card.name}{where}")
    return 1 if failed else 0
