"""Link the objects of consecutive Z slices segmented one by one into 3-D objects (numpy only).

A 2-D model run slice by slice over a Z stack finds each nucleus once per slice. Stitching
gives an object of slice ``z`` the label of the object of slice ``z - 1`` it overlaps best.
Two objects are linked when their intersection over union reaches a threshold (0.3 by
default), or when at least half of the smaller one lies inside the other: the cap of a round
nucleus is a small disk inside the previous slice's large one, with a low IoU. Each object is
linked to at most one object of the previous slice and vice versa (highest IoU first).
"""
from __future__ import annotations

import numpy as np

DEFAULT_IOU = 0.3
CONTAINED = 0.5  # fraction of the smaller object inside the other that links them too


def _matches(prev: np.ndarray, cur: np.ndarray, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (prev_label, cur_label) pairs that overlap enough, highest IoU first."""
    both = (prev > 0) & (cur > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = prev[both].astype(np.int64), cur[both].astype(np.int64)
    pairs, inter = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    la, ca = np.unique(prev[prev > 0], return_counts=True)
    lb, cb = np.unique(cur[cur > 0], return_counts=True)
    area_a = ca[np.searchsorted(la, pairs[0])]
    area_b = cb[np.searchsorted(lb, pairs[1])]
    iou = inter / (area_a + area_b - inter)
    ok = (iou >= iou_thresh) | (inter >= CONTAINED * np.minimum(area_a, area_b))
    order = np.flatnonzero(ok)[np.argsort(-iou[ok], kind="stable")]
    used_a, used_b, out_a, out_b = set(), set(), [], []
    for i in order:
        pa, pb = int(pairs[0, i]), int(pairs[1, i])
        if pa in used_a or pb in used_b:
            continue
        used_a.add(pa)
        used_b.add(pb)
        out_a.append(pa)
        out_b.append(pb)
    return np.asarray(out_a, np.int64), np.asarray(out_b, np.int64)


def stitch_slices(labels: np.ndarray, iou_thresh: float = DEFAULT_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Stitch a ``(Z, Y, X)`` label volume whose labels are unique across slices.

    Returns ``(stitched, lut)``: ``stitched = lut[labels]``, where ``lut`` maps every input
    label to the label of the first slice's object it was linked to (itself when unlinked).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"stitch_slices needs a (Z, Y, X) label volume, got shape {labels.shape}")
    if not 0 < iou_thresh <= 1:
        raise ValueError(f"the stitching IoU threshold must lie in (0, 1], got {iou_thresh}")
    lut = np.arange(int(labels.max(initial=0)) + 1, dtype=np.int64)
    out = np.empty_like(labels)
    if len(labels):
        out[0] = labels[0]
    for z in range(1, len(labels)):
        a, b = _matches(out[z - 1], labels[z], iou_thresh)
        lut[b] = a  # a is already a final label (slice z - 1 was relabelled)
        out[z] = lut[labels[z]]
    return out, lut


__all__ = ["stitch_slices", "DEFAULT_IOU"]
