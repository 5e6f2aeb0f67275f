"""Plain result objects returned by the backends (numpy + builtins; picklable)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentationResult:
    """Instance segmentation of one image or stack.

    ``labels`` has the image's spatial shape (plus leading frame axes), 0 = background.
    ``table`` holds one row per object as equal-length columns (label, area, centroid_*,
    probability, and ``frame`` for stacks processed frame by frame).
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    model: str
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    polygons: list[np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tta: bool = False  # made with test-time augmentation (flips / 90° turns averaged)

    @property
    def n_objects(self) -> int:
        return len(self.table.get("label", ()))
