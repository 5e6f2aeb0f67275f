"""Image + instance labels (a Labels layer, maybe partially painted) -> a U-Net training set.

Only the valid regions (:mod:`.regions`) are cut out, so unpainted pixels never count as
background; the regions are split into training and validation crops, and the defaults
(patch size, epochs) follow from the annotated objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...core.axes import InputError
from .regions import Region, split_regions, valid_regions


@dataclass
class SegmentationSet:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    train_regions: list[Region]
    val_regions: list[Region]
    n_objects: int
    object_diameter: float  # median equivalent diameter in pixels
    defaults: dict = field(default_factory=dict)  # patch_size, epochs, steps_per_epoch, batch_size

    def summary(self) -> str:
        def px(regs):
            return sum(r.shape[0] * r.shape[1] for r in regs)

        n_tr = sum(int(np.count_nonzero(np.unique(m))) for m in self.masks)
        n_va = sum(int(np.count_nonzero(np.unique(m))) for m in self.val_masks)

        def objects(k):
            return f"{k} object" if k == 1 else f"{k} objects"

        return (f"train: {len(self.images)} crop(s), {px(self.train_regions)} px, {objects(n_tr)}; "
                f"val: {len(self.val_images)} crop(s), {px(self.val_regions)} px, {objects(n_va)}")


def _frames(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as stacks: image (T, H, W[, C]) and labels (T, H, W)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise InputError(f"the annotation must be 2-D (YX) or a stack of frames (TYX), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"the annotation must hold integer labels, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError(f"the annotation holds negative labels (down to {labels.min()}); labels are 0 "
                         "(background) or a positive object id")
    if image.shape[:labels.ndim] != labels.shape or image.ndim - labels.ndim not in (0, 1) or (
            image.ndim > labels.ndim and image.shape[-1] > 4):
        raise InputError(f"the image (shape {image.shape}) and the annotation (shape {labels.shape}) differ "
                         "in size; they must cover the same pixels")
    if labels.ndim == 2:
        return image[None], labels[None]
    return image, labels


def _diameters(labels_stack: np.ndarray) -> np.ndarray:
    ids, counts = np.unique(labels_stack[labels_stack > 0], return_counts=True)
    return 2 * np.sqrt(counts / np.pi) if ids.size else np.zeros(0)


def derive_defaults(n_objects: int, diameter: float, region_sides: list[int], multiple: int = 16) -> dict:
    """Patch size ~4 object diameters (a multiple of ``multiple``, 64..256, not much beyond the
    largest region); epochs shrink as objects grow in number (10..60)."""
    want = max(64, int(np.ceil(4 * max(diameter, 1.0))))
    biggest = max(region_sides) if region_sides else want
    want = min(want, max(multiple * int(np.ceil(biggest / multiple)), 32), 256)
    patch = max(multiple, multiple * int(np.ceil(want / multiple)))
    epochs = int(np.clip(round(600 / max(n_objects, 1)), 10, 60))
    return {"patch_size": patch, "epochs": epochs, "steps_per_epoch": 20, "batch_size": 4}


def segmentation_set(image, labels, valid=None, val_fraction: float | None = 0.2, seed: int = 0,
                     multiple: int = 16) -> SegmentationSet:
    """Training and validation crops of ``image`` (YX, YXC, TYX or TYXC) and its ``labels`` (YX / TYX).

    ``valid`` (optional, the labels' shape): nonzero where the annotation is complete; without
    it the valid region of each frame is the bounding box of its painted labels.
    ``multiple``: the network's size multiple (patch sizes are multiples). ``val_fraction``
    ``None``: no validation part (every region trains; the validation data is given apart).
    """
    img, lab = _frames(image, labels)
    if not (lab > 0).any():
        raise InputError("the annotation layer is empty: paint some objects first")
    if valid is not None and np.shape(valid) != np.shape(labels):
        raise InputError(f"the 'fully annotated' mask has shape {np.shape(valid)}, the annotation "
                         f"{np.shape(labels)}; they must cover the same pixels")
    regions = valid_regions(lab > 0, None if valid is None else (np.asarray(valid)[None] if np.ndim(valid) == 2
                                                                   else np.asarray(valid)))
    if not regions:
        raise InputError("the 'fully annotated' mask is empty: mark where the annotation is complete "
                         "(or leave it out to use the annotation's bounding box)")
    counts = [int(np.count_nonzero(np.unique(lab[r.frame][r.slices]))) for r in regions]
    train_r, val_r = (regions, []) if val_fraction is None else split_regions(regions, counts, val_fraction, seed)

    def crops(regs):
        ims, mks = [], []
        for r in regs:
            ims.append(np.ascontiguousarray(img[r.frame][r.slices]))
            mks.append(np.ascontiguousarray(lab[r.frame][r.slices]).astype(np.int32))
        return ims, mks

    ims, mks = crops(train_r)
    vims, vmks = crops(val_r)
    bad = [r for r, c in zip(train_r + val_r, ims + vims) if c.dtype.kind == "f" and not np.isfinite(c).all()]
    if bad:
        raise InputError(f"the image holds NaN or infinite values in the annotated region (frame {bad[0].frame}, "
                         f"rows {bad[0].y0}..{bad[0].y1 - 1}, columns {bad[0].x0}..{bad[0].x1 - 1}); "
                         "replace them before training")
    if not any((m > 0).any() for m in mks):
        raise InputError("no annotated object lies in the training part; annotate more objects")
    if val_fraction is not None and not any((m > 0).any() for m in vmks):
        raise InputError("no annotated object lies in the validation part; annotate more objects "
                         "(or in another frame)")
    d = np.concatenate([_diameters(m) for m in mks + vmks])
    n_objects = int(sum(counts))
    diameter = float(np.median(d)) if d.size else 0.0
    sides = [max(r.shape) for r in train_r]
    return SegmentationSet(ims, mks, vims, vmks, train_r, val_r, n_objects, diameter,
                           derive_defaults(n_objects, diameter, sides, multiple))
