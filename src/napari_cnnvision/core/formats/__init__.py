"""Annotation file formats and the box order of the plugin (numpy only).

Inside the plugin a box is **(y0, x0, y1, x1)** in pixels: napari's (row, column) order,
with ``y1``/``x1`` exclusive edges (a box over pixel rows 10..19 is ``y0=10, y1=20``).
Annotation files use (x, y) order: Pascal VOC ``xmin, ymin, xmax, ymax``; COCO
``[x, y, width, height]``; torchvision's detection models ``(x0, y0, x1, y1)``. The helpers
below are the only place where the two orders are swapped; each format module
(:mod:`.voc`, :mod:`.coco`) uses them.
"""
from __future__ import annotations

import numpy as np


def _as4(b) -> np.ndarray:
    b = np.asarray(b, np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        b = b.reshape(-1, 4)
    return b


def boxes_from_xyxy(xyxy) -> np.ndarray:
    """``(n, 4)`` (x0, y0, x1, y1) -> (y0, x0, y1, x1)."""
    return _as4(xyxy)[:, [1, 0, 3, 2]]


def boxes_to_xyxy(boxes) -> np.ndarray:
    """``(n, 4)`` (y0, x0, y1, x1) -> (x0, y0, x1, y1) (the inverse of :func:`boxes_from_xyxy`)."""
    return _as4(boxes)[:, [1, 0, 3, 2]]


def boxes_to_xywh(boxes) -> np.ndarray:
    """``(n, 4)`` (y0, x0, y1, x1) -> COCO ``[x, y, width, height]``."""
    b = _as4(boxes)
    return np.column_stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]])


def boxes_from_xywh(xywh) -> np.ndarray:
    """COCO ``[x, y, width, height]`` -> (y0, x0, y1, x1)."""
    b = _as4(xywh)
    return np.column_stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]])


def points_from_xy(xy) -> np.ndarray:
    """``(n, 2)`` (x, y) points (COCO polygons, CSV points) -> napari's (row, col) = (y, x)."""
    p = np.asarray(xy, np.float64)
    return np.zeros((0, 2)) if p.size == 0 else p.reshape(-1, 2)[:, ::-1]


def points_to_xy(yx) -> np.ndarray:
    """``(n, 2)`` (row, col) points -> (x, y) (the inverse of :func:`points_from_xy`)."""
    p = np.asarray(yx, np.float64)
    return np.zeros((0, 2)) if p.size == 0 else p.reshape(-1, 2)[:, ::-1]


def box_areas(boxes) -> np.ndarray:
    b = _as4(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


__all__ = ["boxes_from_xyxy", "boxes_to_xyxy", "boxes_to_xywh", "boxes_from_xywh", "points_from_xy", "points_to_xy",
           "box_areas"]
