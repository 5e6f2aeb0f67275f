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


__all__ = ["categories", "image_entry", "annotations_for", "build", "load", "per_image", "category_names"]
