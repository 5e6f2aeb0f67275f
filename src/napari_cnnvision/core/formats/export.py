"""A training-ready dataset folder from images + annotations (the Export widget's backend; numpy only).

:func:`export_dataset` writes, into one folder replaced as a whole (:func:`~napari_cnnvision.core.io.staged_dir`:
a failure half-way leaves the old folder), the images (a stack: one image per frame, ``<name>_t<k>``)
and their annotations in one layout per format, an optional train/val split, the class list and
``MANIFEST.txt`` saying what was written:

* ``yolo``: ``images/<split>/``, ``labels/<split>/<stem>.txt``, ``classes.txt``, ``data.yaml`` (ultralytics);
* ``coco``: ``images/``, ``annotations_<split>.json`` (``annotations.json`` without a split);
* ``voc``: ``images/``, ``annotations/<stem>.xml``, ``splits/<split>.txt`` (BCCD's layout: the
  Train widget reads it);
* ``csv``: ``images/``, ``boxes_<split>.csv`` (``boxes.csv`` without a split);
* ``masks``: ``images/``, ``masks/<stem>.tif`` (uint16/uint32 labels), ``splits/<split>.txt``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import AnnotationSet, ImageAnnotations, subset
from .voc import AnnotationError

EXPORT_FORMATS = ("yolo", "coco", "voc", "csv", "masks")
MANIFEST = "MANIFEST.txt"


@dataclass
class ExportItem:
    """One image (or stack: ``frames=True``, the first axis) with its annotations: ``ann.boxes`` in the
    frame's pixels, ``ann.frame`` the frame of each box for a stack, ``ann.labels`` a label image
    (a stack of them for a stack) or None. ``rgb``: the last axis is colour."""

    image: np.ndarray
    ann: ImageAnnotations
    frames: bool = False
    rgb: bool = False


def _planes(item: ExportItem) -> list[tuple[np.ndarray, ImageAnnotations]]:
    """One (image, annotations) per frame; boxes of frame k and label plane k go with image k."""
    img = np.asarray(item.image)
    name = Path(item.ann.image).stem
    if not item.frames:
        a = item.ann
        return [(img, ImageAnnotations(f"{name}.png", img.shape[:2], a.boxes, a.classes, a.scores,
                                       labels=a.labels))]
    out = []
    frame = item.ann.frame if item.ann.frame is not None else np.zeros(len(item.ann), np.int64)
    for k in range(img.shape[0]):
        part = subset(item.ann, frame == k)
        labels = None if item.ann.labels is None else np.asarray(item.ann.labels)[k]
        out.append((img[k], ImageAnnotations(f"{name}_t{k:04d}.png", img.shape[1:3], part.boxes, part.classes,
                                             part.scores, labels=labels)))
    return out


def _as_png(img: np.ndarray) -> np.ndarray:
    """uint8 (and grey uint16) as they are; other types scaled to uint8 over their range (a PNG holds
    no floats, PIL no 16-bit colour)."""
    if img.ndim == 3 and img.shape[-1] not in (3, 4):
        raise AnnotationError(f"an image of shape {img.shape} is neither grey nor RGB(A): export its channels "
                              "as separate layers")
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if img.dtype == np.uint8 or (img.dtype == np.uint16 and img.ndim == 2):
        return img
    a = img.astype(np.float64)
    lo, hi = np.nanmin(a), np.nanmax(a)
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).round().astype(np.uint8)


def split_names(n: int, val_fraction: float, seed: int = 0) -> list[str]:
    """``"train"``/``"val"`` for each of ``n`` images (a seeded shuffle; at least one of each when
    ``0 < val_fraction < 1`` and ``n >= 2``); all ``""`` without a split."""
    if not val_fraction:
        return [""] * n
    if not 0 < val_fraction < 1:
        raise ValueError(f"the validation fraction must lie between 0 and 1, not {val_fraction}")
    k = int(round(n * val_fraction))
    k = min(max(k, 1), n - 1) if n >= 2 else 0
    order = np.random.default_rng(seed).permutation(n)
    out = ["train"] * n
    for i in order[:k]:
        out[i] = "val"
    return out


def export_dataset(items: list[ExportItem], out_dir: str | Path, fmt: str, class_names=(),
                   val_fraction: float = 0.0, seed: int = 0, note: str = "", progress=None) -> dict:
    """Write the dataset folder (see the module notes); returns ``{"images", "boxes", "splits": {split: n},
    "counts": {class: n}, "path"}``. ``progress`` (a :class:`~napari_cnnvision.core.progress.Progress`)
    hears of each image and may stop the export (the old folder then stays)."""
    from ..progress import NULL_PROGRESS
    from PIL import Image

    from ..io import staged_dir
    from . import coco, csv_boxes, voc, yolo
    from .masks import write_mask_tiff

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {EXPORT_FORMATS}")
    planes = [p for it in items for p in _planes(it)]
    if not planes:
        raise AnnotationError("nothing to export: no images")
    names = [a.image for _, a in planes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AnnotationError(f"two images would both be written as {dup}: give the layers distinct names")
    if fmt == "masks" and any(a.labels is None for _, a in planes):
        raise AnnotationError("the masks format needs a Labels layer for every image")
    splits = split_names(len(planes), val_fraction, seed)
    ds_all = AnnotationSet([a for _, a in planes], list(class_names))
    out_dir = Path(out_dir)
    progress = progress or NULL_PROGRESS
    with staged_dir(out_dir) as tmp:
        for i, ((img, a), s) in enumerate(zip(planes, splits)):
            progress.check()
            progress(i / len(planes), f"image {i + 1} of {len(planes)}")
            sub = tmp / "images" / (s if fmt == "yolo" else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_as_png(img)).save(sub / a.image)
        groups = {s: AnnotationSet([a for (_, a), t in zip(planes, splits) if t == s], ds_all.class_names)
                  for s in dict.fromkeys(splits)}
        progress.check()
        for s, ds in groups.items():
            suffix = f"_{s}" if s else ""
            if fmt == "yolo":
                for a in ds.images:
                    (tmp / "labels" / s).mkdir(parents=True, exist_ok=True)
                    (tmp / "labels" / s / f"{a.stem}.txt").write_text(yolo.label_lines(a, ds.class_ids(a)))
            elif fmt == "coco":
                (tmp / f"annotations{suffix}.json").write_text(json.dumps(coco.to_dict(ds), ensure_ascii=False),
                                                              encoding="utf-8")
            elif fmt == "voc":
                (tmp / "annotations").mkdir(exist_ok=True)
                for a in ds.images:
                    (tmp / "annotations" / f"{a.stem}.xml").write_text(
                        '<?xml version="1.0" encoding="utf-8"?>\n' + voc.voc_xml(a), encoding="utf-8")
            elif fmt == "csv":
                (tmp / f"boxes{suffix}.csv").write_text(csv_boxes.boxes_csv_text(ds), encoding="utf-8")
            else:
                for a in ds.images:
                    write_mask_tiff(tmp / "masks" / f"{a.stem}.tif", a.labels)
            if fmt in ("voc", "masks"):
                (tmp / "splits").mkdir(exist_ok=True)
                (tmp / "splits" / f"{s or 'all'}.txt").write_text("".join(a.stem + "\n" for a in ds.images))
        classes = ds_all.class_names
        (tmp / "classes.txt").write_text("".join(c + "\n" for c in classes), encoding="utf-8")
        if fmt == "yolo":
            import yaml

            parts = {"train": "images/train", "val": "images/val"} if val_fraction else {"train": "images",
                                                                                       "val": "images"}
            (tmp / "data.yaml").write_text(yaml.safe_dump({"path": ".", **parts, "names": dict(enumerate(classes))},
                                                          allow_unicode=True, sort_keys=False), encoding="utf-8")
        counts = ds_all.counts()
        per_split = {s or "all": len(g) for s, g in groups.items()}
        lines = [f"napari-cnnvision dataset export ({fmt})", note, "",
                 f"images: {len(planes)} ({', '.join(f'{k} {v}' for k, v in per_split.items())})",
                 f"boxes: {ds_all.n_boxes} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
                 f"classes (in order, ids from 0 / COCO ids from 1): {classes}",
                 f"split: validation fraction {val_fraction}, seed {seed}" if val_fraction else "split: none", ""]
        (tmp / MANIFEST).write_text("\n".join(ln for ln in lines if ln is not None), encoding="utf-8")
    return {"images": len(planes), "boxes": ds_all.n_boxes, "splits": per_split, "counts": counts,
            "path": str(out_dir)}


__all__ = ["EXPORT_FORMATS", "MANIFEST", "ExportItem", "split_names", "export_dataset"]
