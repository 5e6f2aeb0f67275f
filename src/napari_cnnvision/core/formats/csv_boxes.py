"""CSV tables of boxes (``image,class,xmin,ymin,xmax,ymax[,score][,frame]``) and of points
(``image,class,x,y[,score][,frame]``) <-> :class:`~.annotations.AnnotationSet`.

Pixels, x the column and y the row, 0-based with exclusive ``xmax``/``ymax``. Columns are found by
the header (any order; extra columns ignored), so the ``detect`` command's box tables
(:mod:`.boxtable`) read too. Images without boxes have no rows; the images' sizes are not in the
file (the readers take them from an images folder when given).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from . import boxes_from_xyxy, boxes_to_xyxy, points_from_xy, points_to_xy
from .annotations import AnnotationSet, ImageAnnotations, check_boxes, fill_sizes, number, subset
from .voc import AnnotationError

BOX_COLUMNS = ["image", "class", "xmin", "ymin", "xmax", "ymax"]
POINT_COLUMNS = ["image", "class", "x", "y"]


def _rows(path: str | Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            r = csv.DictReader(f)
            return list(r.fieldnames or []), list(r)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(f"cannot read the CSV file {path}: {exc}") from exc


def header(path: str | Path) -> list[str]:
    """The column names of a CSV file ([] when it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def kind_of(path: str | Path) -> str | None:
    """``"boxes"``, ``"points"`` or None (not one of our tables) by the header."""
    cols = set(header(path))
    if set(BOX_COLUMNS) <= cols:
        return "boxes"
    if set(POINT_COLUMNS) <= cols:
        return "points"
    return None


def _floats(rows, cols, where) -> np.ndarray:
    try:
        return np.array([[float(r[c]) for c in cols] for r in rows], np.float64).reshape(-1, len(cols))
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: a value in the columns {cols} is not a number") from None


def _optional(rows, col, where, cast):
    if not rows or col not in rows[0] or all((r.get(col) or "") == "" for r in rows):
        return None
    try:
        return np.array([cast(r[col]) for r in rows])
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: a '{col}' value is not a number") from None


def _group(rows) -> dict[str, list[int]]:
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(r["image"], []).append(i)
    return by


def read_boxes_csv(path: str | Path, images: str | Path | None = None) -> AnnotationSet:
    """A boxes CSV -> one :class:`~.annotations.ImageAnnotations` per image named in it (first-seen
    order); sizes from the image files in ``images`` when given."""
    cols, rows = _rows(path)
    missing = [c for c in BOX_COLUMNS if c not in cols]
    if missing:
        raise AnnotationError(f"{path}: a boxes CSV needs the columns {BOX_COLUMNS}; {missing} missing")
    boxes = boxes_from_xyxy(_floats(rows, ["xmin", "ymin", "xmax", "ymax"], path))
    scores = _optional(rows, "score", path, float)
    frame = _optional(rows, "frame", path, lambda v: int(float(v)))
    ds = AnnotationSet([], [], [], str(path))
    for name, idx in _group(rows).items():
        ds.images.append(ImageAnnotations(name, None, boxes[idx], [rows[i]["class"] for i in idx],
                                          None if scores is None else scores[idx],
                                          None if frame is None else frame[idx]))
    if images is not None:
        fill_sizes(ds, images)
    for k, a in enumerate(ds.images):
        b, keep = check_boxes(a.boxes, a.size, f"{path}, image {a.image}", ds.warnings)
        a.boxes = b
        ds.images[k] = subset(a, keep)
    return AnnotationSet(ds.images, [], ds.warnings, ds.source)


def _table(columns: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def boxes_csv_text(ds: AnnotationSet) -> str:
    scored = any(a.scores is not None for a in ds.images)
    framed = any(a.frame is not None for a in ds.images)
    cols = BOX_COLUMNS + (["score"] if scored else []) + (["frame"] if framed else [])
    rows = []
    for a in ds.images:
        xyxy = boxes_to_xyxy(a.boxes)
        for k in range(len(a)):
            row = [a.image, a.classes[k], *(number(v) for v in xyxy[k])]
            if scored:
                row.append("" if a.scores is None else number(a.scores[k]))
            if framed:
                row.append("" if a.frame is None else int(a.frame[k]))
            rows.append(row)
    return _table(cols, rows)


def write_boxes_csv(ds: AnnotationSet, path: str | Path) -> Path:
    """One row per box, atomically (UTF-8; a header only when there are no boxes)."""
    from ..io import atomic_write_text

    return atomic_write_text(path, boxes_csv_text(ds))


# --- points ----------------------------------------------------------------------------------------------

def read_points_csv(path: str | Path) -> dict:
    """A points CSV -> ``{"image": [...], "class": [...], "points": (n, 2) (y, x), "score": array or None,
    "frame": array or None}``."""
    cols, rows = _rows(path)
    missing = [c for c in POINT_COLUMNS if c not in cols]
    if missing:
        raise AnnotationError(f"{path}: a points CSV needs the columns {POINT_COLUMNS}; {missing} missing")
    return {"image": [r["image"] for r in rows], "class": [r["class"] for r in rows],
            "points": points_from_xy(_floats(rows, ["x", "y"], path)),
            "score": _optional(rows, "score", path, float),
            "frame": _optional(rows, "frame", path, lambda v: int(float(v)))}


def write_points_csv(path: str | Path, points, classes, image: str = "", scores=None, frame=None) -> Path:
    """``(n, 2)`` (y, x) points with a class each -> ``image,class,x,y[,score][,frame]``, atomically."""
    from ..io import atomic_write_text

    xy = points_to_xy(points)
    cols = POINT_COLUMNS + (["score"] if scores is not None else []) + (["frame"] if frame is not None else [])
    rows = []
    for k in range(len(xy)):
        row = [image, str(classes[k]), number(xy[k, 0]), number(xy[k, 1])]
        if scores is not None:
            row.append(number(scores[k]))
        if frame is not None:
            row.append(int(frame[k]))
        rows.append(row)
    return atomic_write_text(path, _table(cols, rows))


__all__ = ["BOX_COLUMNS", "POINT_COLUMNS", "header", "kind_of", "read_boxes_csv", "boxes_csv_text",
           "write_boxes_csv", "read_points_csv", "write_points_csv"]
