"""COCO detection dicts (``images``, ``categories``, ``annotations``) <-> plugin boxes.

A COCO ``bbox`` is ``[x, y, width, height]`` in pixels, x the column and y the row; the plugin's
boxes are (y0, x0, y1, x1). Category ids are 1-based (``id = class index + 1``). Detections
carry a ``score``; a stack's boxes carry the ``frame`` they were found in (an extra key that
pycocotools ignores).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import box_areas, boxes_from_xywh, boxes_to_xywh
from .voc import AnnotationError


def categories(class_names) -> list[dict]:
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]


def image_entry(image_id: int, file_name: str, height: int, width: int) -> dict:
    return {"id": int(image_id), "file_name": str(file_name), "width": int(width), "height": int(height)}


def annotations_for(image_id: int, boxes, class_ids, scores=None, frame=None, first_id: int = 1) -> list[dict]:
    """COCO annotation dicts of one image's boxes (ids count up from ``first_id``)."""
    xywh = boxes_to_xywh(boxes)
    area = box_areas(boxes)
    out = []
    for k in range(len(xywh)):
        a = {"id": first_id + k, "image_id": int(image_id), "category_id": int(class_ids[k]) + 1,
             "bbox": [round(float(v), 3) for v in xywh[k]], "area": round(float(area[k]), 3), "iscrowd": 0}
        if scores is not None:
            a["score"] = round(float(scores[k]), 5)
        if frame is not None:
            a["frame"] = int(frame[k])
        out.append(a)
    return out


def build(images: list[dict], class_names, per_image: list[dict]) -> dict:
    """A COCO dict: ``images`` (from :func:`image_entry`) and, for each, a dict with ``boxes``,
    ``class_ids`` and optionally ``scores`` / ``frame`` (same order as ``images``)."""
    anns: list[dict] = []
    for img, det in zip(images, per_image):
        anns.extend(annotations_for(img["id"], det["boxes"], det["class_ids"], det.get("scores"), det.get("frame"),
                                    first_id=len(anns) + 1))
    return {"images": list(images), "categories": categories(class_names), "annotations": anns}


def load(path_or_dict) -> dict:
    """A COCO dict from a JSON file (or a dict), checked for the keys detection needs."""
    if isinstance(path_or_dict, dict):
        d, where = path_or_dict, "COCO dict"
    else:
        where = str(path_or_dict)
        try:
            d = json.loads(Path(path_or_dict).read_text())
        except (OSError, ValueError) as exc:
            raise AnnotationError(f"cannot read the COCO file {where}: {exc}") from exc
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
        raise AnnotationError(f"{where}: not a COCO detection dict (needs 'images' and 'annotations' lists)")
    return d


def per_image(coco: dict) -> dict[str, dict]:
    """``file_name -> {"image": entry, "boxes", "class_ids" (0-based), "scores" (or None), "frame"}``."""
    coco = load(coco)
    by_id = {img["id"]: img for img in coco["images"]}
    anns: dict = {i: [] for i in by_id}
    for a in coco["annotations"]:
        if a.get("image_id") not in anns:
            raise AnnotationError(f"COCO annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
        anns[a["image_id"]].append(a)
    out = {}
    for i, img in by_id.items():
        rows = anns[i]
        scores = [a["score"] for a in rows] if rows and all("score" in a for a in rows) else None
        out[img["file_name"]] = {
            "image": img,
            "boxes": boxes_from_xywh([a["bbox"] for a in rows]),
            "class_ids": np.array([int(a["category_id"]) - 1 for a in rows], np.int64),
            "scores": None if scores is None else np.array(scores, np.float64),
            "frame": (np.array([int(a.get("frame", 0)) for a in rows], np.int64)
                      if any("frame" in a for a in rows) else None),
        }
    return out


def category_names(coco: dict) -> list[str]:
    """Class names by category id (ids must be 1..K)."""
    cats = sorted(load(coco).get("categories", []), key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise AnnotationError("COCO category ids must be 1..K")
    return [c["name"] for c in cats]




# --- whole files <-> the format-neutral AnnotationSet (boxes, classes, scores, instance masks) -----------

def _decode_segmentation(segm, h: int, w: int, where: str) -> np.ndarray | None:
    """A COCO ``segmentation`` (polygons, or RLE with list or string counts) -> ``(h, w)`` bool mask."""
    from pycocotools import mask as mask_utils

    if segm is None or (isinstance(segm, list) and not segm):
        return None
    try:
        if isinstance(segm, list):  # polygons [[x0, y0, x1, y1, ...], ...] in pixel-edge coordinates
            polys = [[float(v) for v in p] for p in segm if len(p) >= 6]
            if not polys:
                return None
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, *segm.get("size", (h, w)))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), str):
            rle = {"size": list(segm.get("size", (h, w))), "counts": segm["counts"].encode("ascii")}
        else:
            raise TypeError(f"unknown segmentation {type(segm).__name__}")
        m = mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError, KeyError) as exc:
        raise AnnotationError(f"{where}: unreadable segmentation ({exc})") from None
    if m.shape != (h, w):
        raise AnnotationError(f"{where}: segmentation of size {m.shape} in a {h}x{w} image")
    return m


def read_coco(path, masks: bool = True, source: str | None = None) -> "AnnotationSet":
    """A COCO JSON file (or dict) -> :class:`~.annotations.AnnotationSet`: per image its boxes, class
    names, scores (when every box has one), ``frame`` (when present) and, with ``masks`` and
    ``segmentation`` polygons / RLE present, an instance label image (label ``k + 1`` = box ``k``).
    Category ids may be any integers; the classes keep their id order. Images without boxes are kept.
    ``source`` names a dict's file in messages."""
    from .annotations import AnnotationSet, ImageAnnotations, check_boxes, subset

    where = source or ("COCO dict" if isinstance(path, dict) else str(path))
    d = load(path)
    cats = d.get("categories") or []
    try:
        cats = sorted(cats, key=lambda c: int(c["id"]))
        names = {int(c["id"]): str(c["name"]) for c in cats}
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"{where}: every category needs an integer 'id' and a 'name'") from None
    if len(set(names.values())) != len(names):
        raise AnnotationError(f"{where}: two categories share a name")
    by_id: dict = {}
    for img in d["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise AnnotationError(f"{where}: every image needs an 'id' and a 'file_name'")
        by_id[img["id"]] = img
    rows: dict = {i: [] for i in by_id}
    for a in d["annotations"]:
        if not isinstance(a, dict) or a.get("image_id") not in rows:
            raise AnnotationError(f"{where}: annotation {a.get('id') if isinstance(a, dict) else a!r} refers to "
                                  f"an image id that is not among the images")
        if a.get("category_id") not in names:
            raise AnnotationError(f"{where}: annotation {a.get('id')} has the unknown category {a.get('category_id')}")
        rows[a["image_id"]].append(a)
    warnings: list[str] = []
    out = []
    for i, img in by_id.items():
        anns = rows[i]
        h, w = int(img.get("height") or 0), int(img.get("width") or 0)
        size = (h, w) if h > 0 and w > 0 else None
        label = f"{where}, image {img['file_name']}"
        seg_masks = []
        xywh = []
        for a in anns:
            m = (_decode_segmentation(a.get("segmentation"), h, w, f"{label}, annotation {a.get('id')}")
                 if masks and size is not None else None)
            seg_masks.append(m)
            bb = a.get("bbox")
            if bb is None and m is not None and m.any():
                rr, cc = np.nonzero(m)
                bb = [cc.min(), rr.min(), cc.max() + 1 - cc.min(), rr.max() + 1 - rr.min()]
            try:
                xywh.append([float(v) for v in bb])
                if len(xywh[-1]) != 4:
                    raise ValueError
            except (TypeError, ValueError):
                raise AnnotationError(f"{label}: annotation {a.get('id')} has no valid 'bbox' [x, y, w, h]") from None
        boxes, keep = check_boxes(boxes_from_xywh(xywh), size, label, warnings)
        scores = (np.array([float(a["score"]) for a in anns]) if anns and all("score" in a for a in anns)
                  else None)
        frame = np.array([int(a.get("frame", 0)) for a in anns]) if any("frame" in a for a in anns) else None
        labels = None
        if any(m is not None for m in seg_masks):
            kept = [m for m, k in zip(seg_masks, keep) if k]
            labels = np.zeros((h, w), np.uint16 if len(kept) < 65535 else np.uint32)
            for k, m in enumerate(kept):
                if m is not None:
                    labels[m] = k + 1
        ann = ImageAnnotations(str(img["file_name"]), size, boxes, [names[a["category_id"]] for a in anns],
                               scores, frame)
        ann = subset(ann, keep)
        ann.labels = labels
        out.append(ann)
    return AnnotationSet(out, list(names.values()), warnings, where)


def mask_segmentation(mask: np.ndarray, mode: str = "rle"):
    """A bool mask -> COCO ``segmentation``: compressed RLE (exact) or polygons (outer outlines on pixel
    edges, holes not kept)."""
    from pycocotools import mask as mask_utils

    if mode == "rle":
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if mode != "polygon":
        raise ValueError(f"mask format must be 'rle' or 'polygon', not {mode!r}")
    from skimage.measure import approximate_polygon, find_contours

    from . import points_to_xy

    polys = []
    # contours at 0.5 around pixel centres run along pixel edges: +0.5 turns them into COCO's edge coordinates
    for c in find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
        c = approximate_polygon(c - 1 + 0.5, tolerance=0.0)
        if len(c) >= 3:
            polys.append([round(float(v), 3) for v in points_to_xy(c).ravel()])
    return polys


def instance_segmentations(labels: np.ndarray, n: int, mode: str = "rle") -> dict[int, tuple]:
    """``{k: (segmentation, area)}`` for the objects ``label == k + 1`` (k < n) present in ``labels``
    (one mask at a time: batching them through pycocotools was slower, by the strided copies)."""
    labels = np.asarray(labels)
    areas = np.bincount(labels.ravel().astype(np.int64), minlength=n + 1)[1:n + 1]
    return {int(k): (mask_segmentation(labels == k + 1, mode), int(areas[k])) for k in np.flatnonzero(areas)}


def to_dict(ds: "AnnotationSet", mask_format: str = "rle") -> dict:
    """The COCO dict of an :class:`~.annotations.AnnotationSet` (every image needs its size;
    ``file_name`` is the image's base name; instance masks go in ``segmentation``)."""
    images, anns = [], []
    for i, a in enumerate(ds.images, start=1):
        if a.size is None:
            raise AnnotationError(f"COCO needs the size of {a.image}: give the images (--images DIR)")
        images.append(image_entry(i, Path(a.image).name, a.size[0], a.size[1]))
        xywh = np.round(boxes_to_xywh(a.boxes), 6).tolist()
        area = np.round(box_areas(a.boxes), 6).tolist()
        ids = (ds.class_ids(a) + 1).tolist()
        segs = instance_segmentations(a.labels, len(a), mask_format) if a.labels is not None else {}
        for k in range(len(a)):
            e = {"id": len(anns) + 1, "image_id": i, "category_id": ids[k], "bbox": xywh[k], "area": area[k],
                 "iscrowd": 0}
            if k in segs:
                e["segmentation"], e["area"] = segs[k]
            if a.scores is not None:
                e["score"] = round(float(a.scores[k]), 6)
            if a.frame is not None:
                e["frame"] = int(a.frame[k])
            anns.append(e)
    return {"images": images, "categories": categories(ds.class_names), "annotations": anns}


def write_coco(ds: "AnnotationSet", path, mask_format: str = "rle") -> Path:
    """Write ``ds`` as one COCO JSON file, atomically (UTF-8, class names as written)."""
    from ..io import atomic_write_text

    return atomic_write_text(path, json.dumps(to_dict(ds, mask_format), ensure_ascii=False))  # no indent: C encoder


__all__ = ["categories", "image_entry", "annotations_for", "build", "load", "per_image", "category_names",
           "read_coco", "write_coco", "to_dict", "mask_segmentation", "instance_segmentations"]
