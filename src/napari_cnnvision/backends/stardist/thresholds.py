"""Optimize a StarDist model's probability / NMS thresholds for the plugin's own inference path.

StarDist's ``optimize_thresholds`` scores its default post-processing (object centres within two
grid steps of the image edge dropped) and averages AP over IoU 0.3/0.5/0.7. This searches the
thresholds for exactly what :func:`~.predict.segment` does (``exclude_border``, ``tta``) and for
AP at one IoU (0.5 by default, the figure the model targets are stated in). The network runs once
per image; each candidate threshold pair re-runs only non-maximum suppression.
"""
from __future__ import annotations

import numpy as np

from ...core.normalize import normalize_for
from ...core.progress import NULL_PROGRESS, Progress


def raw_outputs(model, images, tta=False, normalization: dict | None = None, progress: Progress = NULL_PROGRESS):
    """The network's (prob, dist) for each 2D image, averaged over flips/turns if ``tta``;
    ``normalization``: a model card's (default: percentiles 1 / 99.8)."""
    from .predict import network_output

    axes = "YX" if images[0].ndim == 2 else "YXC"
    out = []
    for k, x in enumerate(images):
        progress.check()
        out.append(network_output(model, normalize_for(x, normalization)[0], axes, tta=tta))
        progress((k + 1) / len(images) * 0.5, f"network output {k + 1}/{len(images)}")
    return out


def score(model, images, masks, raw, prob, nms, exclude_border=0, iou=0.5) -> float:
    from stardist.matching import matching_dataset

    labels = [model._instances_from_prediction(m.shape, p, d, prob_thresh=prob, nms_thresh=nms,
                                               b=exclude_border)[0] for m, (p, d) in zip(masks, raw)]
    return float(matching_dataset(list(masks), labels, thresh=iou, show_progress=False, by_image=False).accuracy)


def optimize_thresholds(model, images, masks, *, tta=False, exclude_border=0, iou=0.5,
                        nms_threshs=(0.3, 0.4, 0.5), prob_coarse=tuple(np.round(np.arange(0.3, 0.81, 0.05), 2)),
                        fine_step=0.01, raw=None, normalization: dict | None = None,
                        progress: Progress = NULL_PROGRESS) -> dict:
    """Best ``{"prob", "nms", "ap"}`` on (images, masks): a coarse probability grid per NMS
    threshold, then a fine one around the best coarse value."""
    if len(images) != len(masks) or not images:
        raise ValueError("need the same, non-zero number of images and masks")
    raw = raw_outputs(model, images, tta, normalization, progress=progress) if raw is None else raw
    seen: dict = {}

    def f(prob, nms):
        key = (round(float(prob), 4), float(nms))
        if key not in seen:
            progress.check()
            seen[key] = score(model, images, masks, raw, key[0], key[1], exclude_border, iou)
        return seen[key]

    best = (-1.0, None, None)
    for i, nms in enumerate(nms_threshs):
        coarse = max(prob_coarse, key=lambda p: f(p, nms))
        step = (prob_coarse[1] - prob_coarse[0]) if len(prob_coarse) > 1 else fine_step
        fine = np.arange(coarse - step + fine_step, coarse + step, fine_step)
        p = max([coarse] + [q for q in fine if 0 < q < 1], key=lambda q: f(q, nms))
        if f(p, nms) > best[0]:
            best = (f(p, nms), round(float(p), 4), float(nms))
        progress(0.5 + 0.5 * (i + 1) / len(nms_threshs), f"NMS {nms}: best prob {p:.2f}, AP {f(p, nms):.4f}")
    return {"prob": best[1], "nms": best[2], "ap": best[0]}
