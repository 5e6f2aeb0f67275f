"""An image stack + one rectangle with a class per frame (a Shapes layer) -> the localizer's
training set. Frames without a rectangle are not annotated and left out; the split is by frame."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...core.axes import InputError
from .detection import _missing


@dataclass
class LocalizationSet:
    images: list[np.ndarray]
    boxes: np.ndarray  # (n, 4) y0, x0, y1, x1
    labels: np.ndarray  # (n,) 0-based class ids
    val_images: list[np.ndarray]
    val_boxes: np.ndarray
    val_labels: np.ndarray
    classes: list[str]
    train_frames: list[int]
    val_frames: list[int]
    defaults: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"train: {len(self.images)} frame(s); val: {len(self.val_images)} frame(s); "
                f"classes: {', '.join(self.classes)}")


def localization_set(image, boxes, classes, frames, val_fraction: float | None = 0.2,
                     seed: int = 0) -> LocalizationSet:
    """``image`` TYX / TYXC, ``boxes`` (n, 4) y0, x0, y1, x1 with their ``frames`` and class names:
    exactly one rectangle in each annotated frame. ``val_fraction`` ``None``: every frame trains."""
    image = np.asarray(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if frames is None or image.ndim < 3 or (image.ndim == 3 and image.shape[-1] in (3, 4)):
        raise InputError("localization trains on an image stack (TYX) with one rectangle per frame")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise InputError(f"the validation fraction must lie between 0 and 1, got {val_fraction}")
    fr = np.asarray(frames, np.int64).reshape(-1)
    if not len(boxes):
        raise InputError("the rectangle layer is empty: draw one rectangle (with its class) in each annotated frame")
    if len(classes) != len(boxes) or len(fr) != len(boxes):
        raise InputError(f"{len(boxes)} rectangles but {len(classes)} class names / {len(fr)} frames")
    missing = [i for i, c in enumerate(classes) if _missing(c)]
    if missing:
        raise InputError(f"{len(missing)} of {len(boxes)} rectangles have no class name (first: frame "
                         f"{int(fr[missing[0]])}); every rectangle needs one (the Shapes layer's 'class' feature)")
    if not np.isfinite(boxes).all():
        raise InputError("some rectangles have NaN or infinite coordinates")
    ids, counts = np.unique(fr, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"frames {ids[counts > 1].tolist()[:10]} hold more than one rectangle; localization "
                         "takes one per frame")
    if fr.min() < 0 or fr.max() >= image.shape[0]:
        raise InputError(f"rectangles lie in frames {ids.tolist()[:10]}, the stack has {image.shape[0]}")
    h, w = image.shape[1:3]
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if flat.any():
        raise InputError(f"{int(flat.sum())} rectangle(s) have zero width or height (first: frame "
                         f"{int(fr[np.flatnonzero(flat)[0]])}); delete or redraw them")
    out = (boxes[:, :2] < -0.5).any(1) | (boxes[:, 2] > h + 0.5) | (boxes[:, 3] > w + 0.5)
    if out.any():
        raise InputError(f"{int(out.sum())} rectangle(s) lie outside the image ({w}x{h} pixels; first: frame "
                         f"{int(fr[np.flatnonzero(out)[0]])}); move or delete them")
    if image.dtype.kind == "f" and not np.isfinite(image[ids]).all():
        raise InputError("the image holds NaN or infinite values in an annotated frame; replace them before training")
    boxes = np.clip(boxes, 0, [h, w, h, w])
    if len(boxes) < 2 and val_fraction is not None:
        raise InputError("annotate at least 2 frames (one for training, one for validation)")
    classes = [str(c).strip() for c in classes]
    names = list(dict.fromkeys(str(c) for c in classes))
    lab = np.array([names.index(str(c)) for c in classes], np.int64)
    order = np.random.default_rng(seed).permutation(len(boxes))
    n_val = 0 if val_fraction is None else int(np.clip(round(len(boxes) * val_fraction), 1, len(boxes) - 1))
    va, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    epochs = int(np.clip(round(3000 / len(boxes)), 20, 200))
    return LocalizationSet([image[fr[i]] for i in tr], boxes[tr], lab[tr], [image[fr[i]] for i in va], boxes[va],
                           lab[va], names, fr[tr].tolist(), fr[va].tolist(), {"epochs": epochs})
