"""Label images <-> 3-class maps (numpy/scipy/scikit-image only).

Training target: 0 background, 1 object interior, 2 object boundary (the object's own
outermost pixels, ``find_boundaries(mode="inner")``), so touching objects are separated
by their boundary pixels. Instances come back by a seeded watershed on the predicted
probabilities (:func:`instances_from_probs`).
"""
from __future__ import annotations

import numpy as np

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def labels_to_target(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` instance labels -> ``(H, W)`` uint8 classes 0 bg / 1 interior / 2 boundary."""
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        elif labels.dtype == bool:
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    target = np.zeros(labels.shape, np.uint8)
    fg = labels > 0
    target[fg] = INTERIOR
    target[find_boundaries(labels, mode="inner") & fg] = BOUNDARY
    return target


def instances_from_probs(
    probs: np.ndarray,
    seed_thresh: float = 0.5,
    fg_thresh: float = 0.5,
    min_size: int = 8,
) -> np.ndarray:
    """Seeded watershed on ``(3, H, W)`` class probabilities -> int32 labels 1..n.

    Seeds are the connected components of ``interior > seed_thresh`` (components smaller
    than ``min_size`` pixels are dropped); the foreground mask is
    ``interior + boundary > fg_thresh`` (plus the seeds); each seed grows by a watershed
    on ``-interior`` inside the mask. Foreground not reachable from a seed stays 0.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] < 3:
        raise ValueError(f"probs must have shape (3, H, W), got {probs.shape}")
    if not (0.0 <= seed_thresh <= 1.0 and 0.0 <= fg_thresh <= 1.0):
        raise ValueError(f"thresholds must lie in 0..1, got seed {seed_thresh}, foreground {fg_thresh}")
    interior = np.nan_to_num(probs[INTERIOR].astype(np.float32, copy=False))
    boundary = np.nan_to_num(probs[BOUNDARY].astype(np.float32, copy=False))
    seeds, n = ndi.label(interior > seed_thresh)
    if n and min_size > 1:
        sizes = np.bincount(seeds.ravel(), minlength=n + 1)
        small = sizes < min_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
            seeds, _, _ = relabel_sequential(seeds)
            n = int(seeds.max())
    if n == 0:
        return np.zeros(interior.shape, np.int32)
    mask = ((interior + boundary) > fg_thresh) | (seeds > 0)
    labels = watershed(-interior, markers=seeds, mask=mask)
    labels, _, _ = relabel_sequential(labels.astype(np.int32, copy=False))
    return labels.astype(np.int32, copy=False)


def object_probabilities(labels: np.ndarray, interior: np.ndarray) -> np.ndarray:
    """Mean interior probability of each object 1..labels.max()."""
    from scipy import ndimage as ndi

    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, np.float64)
    return np.asarray(ndi.mean(interior, labels=labels, index=np.arange(1, n + 1)), np.float64)
