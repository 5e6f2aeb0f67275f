"""Localization scores (numpy only): class accuracy, per-class and balanced accuracy, box IoU."""
from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of two ``(n, 4)`` box arrays in the same corner order (y0, x0, y1, x1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ih = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iw = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ih * iw
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def localization_scores(pred_labels, true_labels, pred_boxes, true_boxes, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy (the mean per-class recall over the classes present in the
    truth, as scikit-learn defines it), per-class accuracy, mean box IoU and the fraction of boxes
    with IoU >= 0.5 (and >= 0.75). Boxes in any common corner order and scale."""
    p = np.asarray(pred_labels, np.int64).ravel()
    t = np.asarray(true_labels, np.int64).ravel()
    if len(p) != len(t) or len(p) == 0:
        raise ValueError(f"need as many predictions as truths (got {len(p)} and {len(t)}), at least one")
    iou = box_iou(pred_boxes, true_boxes)
    per_class = {}
    for i, name in enumerate(class_names):
        sel = t == i
        if sel.any():
            per_class[name] = float((p[sel] == i).mean())
    return {"accuracy": float((p == t).mean()),
            "balanced_accuracy": float(np.mean(list(per_class.values()))),
            "per_class_accuracy": per_class,
            "per_class_n": {name: int((t == i).sum()) for i, name in enumerate(class_names) if (t == i).any()},
            "mean_iou": float(iou.mean()), "iou_ge_0.5": float((iou >= 0.5).mean()),
            "iou_ge_0.75": float((iou >= 0.75).mean()), "n": int(len(t))}
