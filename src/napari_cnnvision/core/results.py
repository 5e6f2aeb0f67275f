"""Plain result objects returned by the backends (numpy + builtins; picklable).

One type per task. Every result names its ``model``, carries ``warnings`` for the user and
``timings`` in seconds; the conversion to napari layer data lives in ``layers/`` (one module
per task), the conversion to files in ``core/``.
"""
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
    normalization: dict | None = None  # what the image was normalized with (the card's or the caller's)
    frames: list[int] | None = None  # frame indices that were processed (None: all / no frame axis)

    @property
    def n_objects(self) -> int:
        return len(self.table.get("label", ()))


def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return b


@dataclass
class DetectionResult:
    """Objects found in one image or stack, each a box with a class and a score.

    ``boxes`` is ``(n, 4)`` in pixel coordinates of the input image, **(y0, x0, y1, x1)** order
    (napari's row/column order; y1/x1 exclusive edges), ``class_ids`` index into
    ``class_names``, ``scores`` lie in 0..1 and ``frame`` is the index along the stack's leading
    frame axis (T or Z) or all zeros for a single image. ``image_shape`` is the spatial shape
    (H, W) of one frame.
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    model: str
    image_shape: tuple[int, int]
    frame: np.ndarray | None = None
    has_frames: bool = False  # the input had a leading frame axis
    score_thresh: float | None = None
    nms_thresh: float | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    normalization: dict | None = None
    frames: list[int] | None = None  # frame indices that were processed (None: all / no frame axis)

    def __post_init__(self):
        self.boxes = _as_boxes(self.boxes)
        n = len(self.boxes)
        self.class_ids = np.asarray(self.class_ids, np.int64).reshape(n)
        self.scores = np.asarray(self.scores, np.float64).reshape(n)
        self.frame = (np.zeros(n, np.int64) if self.frame is None
                      else np.asarray(self.frame, np.int64).reshape(n))
        self.image_shape = tuple(int(s) for s in self.image_shape)
        if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.class_names)):
            raise ValueError(f"class ids {sorted(set(self.class_ids.tolist()))} do not index "
                             f"the {len(self.class_names)} class names {self.class_names}")

    @property
    def n_objects(self) -> int:
        return len(self.boxes)

    @property
    def classes(self) -> list[str]:
        """The class name of each object."""
        return [self.class_names[i] for i in self.class_ids]

    @property
    def centers(self) -> np.ndarray:
        """``(n, 2)`` box centres (y, x)."""
        return np.column_stack([(self.boxes[:, 0] + self.boxes[:, 2]) / 2,
                                (self.boxes[:, 1] + self.boxes[:, 3]) / 2]) if len(self.boxes) else np.zeros((0, 2))

    @property
    def table(self) -> dict[str, np.ndarray]:
        """One row per object: (frame,) class, score, y0, x0, y1, x1 (for CSV export)."""
        out = {"frame": self.frame} if self.has_frames else {}
        out.update({"class": np.asarray(self.classes, dtype=object), "score": self.scores,
                    "y0": self.boxes[:, 0], "x0": self.boxes[:, 1], "y1": self.boxes[:, 2], "x1": self.boxes[:, 3]})
        return out

    def counts(self) -> dict[str, int]:
        """Objects per class name (classes with none included)."""
        c = np.bincount(self.class_ids, minlength=len(self.class_names))
        return {name: int(k) for name, k in zip(self.class_names, c)}


@dataclass
class LocalizationResult(DetectionResult):
    """The one object of each image / frame / region: a :class:`DetectionResult` with exactly
    one box per processed frame (or per region), plus the full class probabilities.

    ``probabilities`` is ``(n, n_classes)``; ``region`` (optional) the index of the user-drawn
    region each box belongs to.
    """

    probabilities: np.ndarray | None = None
    region: np.ndarray | None = None

    def __post_init__(self):
        super().__post_init__()
        n = len(self.boxes)
        if self.probabilities is not None:
            self.probabilities = np.asarray(self.probabilities, np.float64).reshape(n, len(self.class_names))
        if self.region is not None:
            self.region = np.asarray(self.region, np.int64).reshape(n)
