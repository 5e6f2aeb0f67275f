"""Instance-segmentation metrics (StarDist's matching), aggregated over many images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SegmentationScores:
    """One row per IoU threshold. ``ap`` is TP / (TP + FP + FN), as the StarDist paper reports it."""

    iou: list[float]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    ap: list[float]
    tp: list[int]
    fp: list[int]
    fn: list[int]
    n_images: int

    def at(self, iou: float) -> dict:
        i = int(np.argmin(np.abs(np.asarray(self.iou) - iou)))
        return {k: getattr(self, k)[i] for k in ("iou", "precision", "recall", "f1", "ap", "tp", "fp", "fn")}

    def card_metrics(self, predict_seconds: float | None = None) -> dict:
        """The figures a model card records: ``ap@0.5`` ... ``f1@0.9``, ``n_images`` (and the time)."""
        out = {f"ap@{s:.1f}": round(v, 4) for s, v in zip(self.iou, self.ap)}
        out |= {f"f1@{s:.1f}": round(v, 4) for s, v in zip(self.iou, self.f1)}
        out["n_images"] = self.n_images
        if predict_seconds is not None:
            out["predict_seconds"] = round(predict_seconds, 1)
        return out


def score_segmentations(truths, preds, ious=DEFAULT_IOUS) -> SegmentationScores:
    """Aggregate counts over all image pairs (``matching_dataset`` semantics)."""
    from stardist.matching import matching_dataset

    if len(truths) != len(preds):
        raise ValueError(f"{len(truths)} ground-truth images but {len(preds)} predictions")
    if not truths:
        raise ValueError("nothing to evaluate")
    for k, (t, p) in enumerate(zip(truths, preds)):
        if t.shape != p.shape:
            raise ValueError(f"image {k}: prediction shape {p.shape} != ground truth shape {t.shape}")
    stats = matching_dataset(list(truths), list(preds), thresh=list(ious), show_progress=False, by_image=False)
    return SegmentationScores(
        iou=[float(s.thresh) for s in stats], precision=[float(s.precision) for s in stats],
        recall=[float(s.recall) for s in stats], f1=[float(s.f1) for s in stats],
        ap=[float(s.accuracy) for s in stats], tp=[int(s.tp) for s in stats], fp=[int(s.fp) for s in stats],
        fn=[int(s.fn) for s in stats], n_images=len(truths))
