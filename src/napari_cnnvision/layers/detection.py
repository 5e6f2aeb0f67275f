"""DetectionResult / LocalizationResult -> napari Shapes (rectangles) + Points (centres) LayerDataTuples.

Boxes are (y0, x0, y1, x1) in the result; a napari rectangle is its 4 corners in (row, col)
order, with the frame index in front for stacks. Class names and scores go into each layer's
``features`` (and its text); the class decides the edge colour.
"""
from __future__ import annotations

import numpy as np

from ..core.results import DetectionResult, LocalizationResult
from .common import geometry, result_meta, result_name

# a colour per class, cycled (tab10-like, readable on dark and light images)
PALETTE = ["#ff4040", "#40c0ff", "#ffd000", "#40ff80", "#ff80ff", "#ff9020", "#a0a0ff", "#80ffff",
           "#c0ff40", "#ffffff"]


def rectangles(result: DetectionResult) -> np.ndarray:
    """``(n, 4, D)`` corners of each box; D = 2, or 3 with the frame index first for stacks."""
    b = result.boxes
    y0, x0, y1, x1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    corners = np.stack([np.stack([y0, x0], 1), np.stack([y0, x1], 1),
                        np.stack([y1, x1], 1), np.stack([y1, x0], 1)], axis=1)
    if result.has_frames:
        f = np.broadcast_to(result.frame[:, None, None].astype(np.float64), (len(b), 4, 1))
        corners = np.concatenate([f, corners], axis=2)
    return corners.reshape(len(b), 4, 3 if result.has_frames else 2)


def _features(result: DetectionResult):
    import pandas as pd

    cols = {}
    if result.has_frames:
        cols["frame"] = result.frame
    cols["class"] = pd.Categorical(result.classes, categories=list(result.class_names))
    cols["score"] = result.scores
    if isinstance(result, LocalizationResult):
        if result.region is not None:
            cols["region"] = result.region
        if result.probabilities is not None:
            for i, name in enumerate(result.class_names):
                cols[f"p_{name}"] = result.probabilities[:, i]
    return pd.DataFrame(cols)


def class_colors(result: DetectionResult) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in result.class_ids]


def detection_layers(result: DetectionResult, image_name: str = "image", scale=None, translate=None,
                     points: bool = True) -> list[tuple]:
    """``[(rectangles, kwargs, 'shapes'), (centres, kwargs, 'points')]`` for a detection or
    localization result (an empty result gives empty, valid layers)."""
    kind = "localization" if isinstance(result, LocalizationResult) else "detection"
    name = result_name(image_name, result.model)
    ndim = 3 if result.has_frames else 2
    feats = _features(result)
    colors = class_colors(result)
    meta = result_meta(kind, result.model, image_name, score_thresh=result.score_thresh,
                       nms_thresh=result.nms_thresh, class_names=list(result.class_names))
    geo = geometry(ndim, scale, translate)
    text = {"string": "{class} {score:.2f}", "size": 10, "color": "white", "anchor": "upper_left"}
    skw = {"name": name, "shape_type": "rectangle", "features": feats, "edge_color": colors or "yellow",
           "face_color": "transparent", "edge_width": 2, "text": text, "metadata": meta, "ndim": ndim, **geo}
    out = [(list(rectangles(result)), skw, "shapes")]
    if points:
        centers = result.centers
        if result.has_frames:
            centers = np.column_stack([result.frame, centers]) if len(centers) else np.zeros((0, 3))
        pmeta = result_meta(f"{kind}-centres", result.model, image_name)
        pkw = {"name": f"{name} centres", "features": feats.copy(), "face_color": colors or "yellow",
               "size": 6, "metadata": pmeta, "ndim": ndim, **geo}
        out.append((centers, pkw, "points"))
    return out
