"""Box tables as CSV: one row per box, ``image,class,score,xmin,ymin,xmax,ymax`` (+ ``frame``).

Pixels, x the column and y the row, 0-based with exclusive ``xmax``/``ymax`` (the plugin's
box convention, :mod:`napari_cnnvision.core.formats`). Any
:class:`~napari_cnnvision.core.results.DetectionResult` (a localization too) gives rows.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from . import boxes_from_xyxy

COLUMNS = ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"]


def rows_of(image_name: str, result) -> list[dict]:
    """One dict per box of ``result`` (``frame`` added for stacks)."""
    rows = []
    for k in range(result.n_objects):
        y0, x0, y1, x1 = (float(v) for v in result.boxes[k])
        row = {"image": image_name, "class": result.class_names[int(result.class_ids[k])],
               "score": f"{float(result.scores[k]):.4f}",
               "xmin": f"{x0:.1f}", "ymin": f"{y0:.1f}", "xmax": f"{x1:.1f}", "ymax": f"{y1:.1f}"}
        if result.has_frames:
            row["frame"] = int(result.frame[k])
        rows.append(row)
    return rows


def write_rows(path: str | Path, rows: list[dict], frames: bool | None = None) -> Path:
    """Write rows atomically (a header only when there are none); ``frames`` forces the
    ``frame`` column on or off (default: when a row has one)."""
    from ..io import atomic_write_text

    with_frame = any("frame" in r for r in rows) if frames is None else frames
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + (["frame"] if with_frame else []), restval="",
                       extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_rows(path: str | Path) -> dict:
    """``{"image": [...], "class": [...], "score": array, "boxes": (n, 4) y0, x0, y1, x1, "frame": array}``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: the box table lacks the columns {missing}")
    xyxy = np.array([[float(r[c]) for c in ("xmin", "ymin", "xmax", "ymax")] for r in rows], np.float64)
    return {"image": [r["image"] for r in rows], "class": [r["class"] for r in rows],
            "score": np.array([float(r["score"]) for r in rows], np.float64),
            "boxes": boxes_from_xyxy(xyxy.reshape(-1, 4)),
            "frame": np.array([int(r.get("frame") or 0) for r in rows], np.int64)}


__all__ = ["COLUMNS", "rows_of", "write_rows", "read_rows"]
