"""A small, dependency-free average precision of boxes at one IoU (for choosing epochs).

COCO-style: per class, detections of all images sorted by score are matched greedily to
unmatched ground truth of the same image with IoU >= ``iou``; precision is made monotone
and sampled at 101 recall points. Classes without ground truth are left out of the mean.
The plugin's reported figures come from pycocotools (``evaluate.py``); this one agrees with
it closely and is fast enough to run after every epoch.
"""
from __future__ import annotations

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def average_precision(preds: list[dict], truths: list[dict], num_classes: int, iou: float = 0.5) -> dict:
    """``preds``/``truths``: per image dicts of numpy ``boxes`` (n, 4) x0, y0, x1, y1 and
    ``labels`` 1..K (preds also ``scores``). Returns ``{"map": float, "ap": {label: float}}``.
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} images")
    ap = {}
    for c in range(1, num_classes + 1):
        n_gt = 0
        records = []  # (score, is_tp)
        for p, t in zip(preds, truths):
            gt = np.asarray(t["boxes"], np.float64).reshape(-1, 4)[np.asarray(t["labels"]) == c]
            n_gt += len(gt)
            sel = np.asarray(p["labels"]) == c
            pb = np.asarray(p["boxes"], np.float64).reshape(-1, 4)[sel]
            ps = np.asarray(p["scores"], np.float64)[sel]
            order = np.argsort(-ps, kind="stable")
            pb, ps = pb[order], ps[order]
            used = np.zeros(len(gt), bool)
            ious = _iou(pb, gt) if len(gt) and len(pb) else np.zeros((len(pb), len(gt)))
            for i in range(len(pb)):
                tp = False
                if len(gt):
                    cand = np.where(~used, ious[i], -1.0)
                    j = int(cand.argmax())
                    if cand[j] >= iou:
                        used[j] = tp = True
                records.append((ps[i], tp))
        if n_gt == 0:
            continue
        if not records:
            ap[c] = 0.0
            continue
        records.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in records])
        fp = np.cumsum([not r[1] for r in records])
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, 1e-9)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        points = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, points, side="left")
        ap[c] = float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))
    return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}
