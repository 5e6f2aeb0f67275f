"""Image + boxes with class names (a Shapes layer of rectangles) -> the detector trainer's samples.

Boxes are ``(y0, x0, y1, x1)`` pixels, one frame index each for a stack. Only the valid region of
each frame -- the bounding box of its boxes, or the regions of a "fully annotated" mask -- is
used, so unannotated objects elsewhere never become background. The class set is the user's
(classes unknown to a base model are fine: its heads are rebuilt).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...core.axes import InputError
from .regions import Region, split_regions

PERCENTILES = (1.0, 99.8)


@dataclass
class DetectionSet:
    train: list[dict]  # {"image": (H, W, 3) uint8 or float 0..1, "boxes": x0 y0 x1 y1, "labels": 1..K}
    val: list[dict]
    classes: list[str]
    train_regions: list[Region]
    val_regions: list[Region]
    normalization: dict
    dropped: int = 0  # boxes cut to slivers by the train/val cut
    defaults: dict = field(default_factory=dict)

    def summary(self) -> str:
        def boxes(ss):
            k = sum(len(s["boxes"]) for s in ss)
            return f"{k} box" if k == 1 else f"{k} boxes"

        return (f"train: {len(self.train)} crop(s), {boxes(self.train)}; val: {len(self.val)} crop(s), "
                f"{boxes(self.val)}; classes: {', '.join(self.classes)}")


def _as_rgb(frame: np.ndarray) -> tuple[np.ndarray, dict]:
    """(H, W, 3): uint8 as it is (scaled by 1/255 at inference), other types percentile-normalized."""
    x = frame if frame.ndim == 3 else frame[..., None]
    x = x[..., :3]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x), {"type": "scale", "factor": 1 / 255}
    lo, hi = np.percentile(x, PERCENTILES)
    y = np.clip((x.astype(np.float32) - lo) / max(float(hi - lo), 1e-12), 0, 1)
    return y.astype(np.float32), {"type": "percentile", "pmin": PERCENTILES[0], "pmax": PERCENTILES[1]}


def _missing(c) -> bool:
    return c is None or str(c).strip() in ("", "nan", "None", "<NA>")


def _check(image, boxes, classes, frames):
    image = np.asarray(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(classes) != len(boxes):
        raise InputError(f"{len(boxes)} boxes but {len(classes)} class names")
    if not len(boxes):
        raise InputError("the box layer is empty: draw some rectangles first")
    missing = [i for i, c in enumerate(classes) if _missing(c)]
    if missing:
        raise InputError(f"{len(missing)} of {len(boxes)} boxes have no class name (first: box {missing[0]}); "
                         "every box needs one (the Shapes layer's 'class' feature)")
    if not np.isfinite(boxes).all():
        raise InputError("some boxes have NaN or infinite coordinates")
    stacked = frames is not None
    if image.ndim - (1 if stacked else 0) not in (2, 3):
        raise InputError(f"the image must be YX, YXC (or a stack of them), got shape {image.shape}")
    if not stacked and image.ndim == 3 and image.shape[-1] > 4:
        raise InputError(f"the image (shape {image.shape}) is a stack of {image.shape[0]} frames: give each box "
                         "its frame (boxes drawn on the stack's frames)")
    if not image.size:
        raise InputError(f"the image is empty (shape {image.shape})")
    spatial = image.shape[1:3] if stacked else image.shape[:2]
    fr = np.zeros(len(boxes), np.int64) if not stacked else np.asarray(frames, np.int64).reshape(-1)
    if len(fr) != len(boxes):
        raise InputError(f"{len(boxes)} boxes but {len(fr)} frame indices")
    if stacked and (fr.min() < 0 or fr.max() >= image.shape[0]):
        raise InputError(f"boxes lie in frames {sorted(set(fr.tolist()))}, the image has {image.shape[0]}")
    h, w = spatial
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if flat.any():
        raise InputError(f"{int(flat.sum())} box(es) have zero width or height (first: box "
                         f"{int(np.flatnonzero(flat)[0])}); delete or redraw them")
    out = (boxes[:, :2] < -0.5).any(1) | (boxes[:, 2] > h + 0.5) | (boxes[:, 3] > w + 0.5)
    if out.any():
        raise InputError(f"{int(out.sum())} box(es) lie outside the image ({w}x{h} pixels; first: box "
                         f"{int(np.flatnonzero(out)[0])}); move or delete them")
    stack = image if stacked else image[None]
    if stack.dtype.kind == "f" and not np.isfinite(stack[np.unique(fr)]).all():
        raise InputError("the image holds NaN or infinite values; replace them before training")
    return stack, np.clip(boxes, 0, [h, w, h, w]), fr


def _check_regions(regions: list[Region], stack: np.ndarray) -> list[Region]:
    """The "fully annotated" regions clipped to the image; InputError for one outside it."""
    n, h, w = stack.shape[:3]
    out = []
    for r in regions:
        if not 0 <= r.frame < n:
            raise InputError(f"a 'fully annotated' region lies in frame {r.frame}, the image has {n}")
        c = Region(r.frame, max(r.y0, 0), max(r.x0, 0), min(r.y1, h), min(r.x1, w))
        if c.y1 - c.y0 < 1 or c.x1 - c.x0 < 1:
            raise InputError(f"a 'fully annotated' region ({r.y0}, {r.x0})..({r.y1}, {r.x1}) lies outside the "
                             f"image ({w}x{h} pixels) or is empty")
        out.append(c)
    if not out:
        raise InputError("the 'fully annotated' layer has no regions")
    return out


def detection_set(image, boxes, classes, frames=None, valid_regions: list[Region] | None = None,
                  val_fraction: float | None = 0.2, seed: int = 0, min_keep: float = 0.5) -> DetectionSet:
    """The detector's training and validation samples.

    ``image``: YX / YXC, or a stack (TYX / TYXC) with ``frames`` (one frame index per box).
    ``valid_regions`` (optional): the fully annotated regions; by default the bounding box of
    each frame's boxes. A region cut for validation keeps boxes with at least ``min_keep`` of
    their area on its side (clipped to it); the slivers are dropped and counted. ``val_fraction``
    ``None``: no validation part (every region trains; the validation data is given apart).
    """
    stack, b, fr = _check(image, boxes, classes, frames)
    classes = [str(c).strip() for c in classes]  # "WBC " is "WBC"
    names = list(dict.fromkeys(classes))
    cls = np.array([names.index(c) + 1 for c in classes], np.int64)
    if valid_regions is not None:
        valid_regions = _check_regions(list(valid_regions), stack)
    else:
        valid_regions = []
        for t in sorted(set(fr.tolist())):
            s = b[fr == t]
            valid_regions.append(Region(t, int(np.floor(s[:, 0].min())), int(np.floor(s[:, 1].min())),
                                        int(np.ceil(s[:, 2].max())), int(np.ceil(s[:, 3].max()))))
    counts = [int(((fr == r.frame) & (b[:, 0] >= r.y0) & (b[:, 2] <= r.y1) & (b[:, 1] >= r.x0)
                   & (b[:, 3] <= r.x1)).sum()) for r in valid_regions]
    train_r, val_r = (valid_regions, []) if val_fraction is None else split_regions(valid_regions, counts,
                                                                                      val_fraction, seed)
    dropped = 0
    norms = []

    def samples(regs):
        nonlocal dropped
        out = []
        for r in regs:
            sel = fr == r.frame
            bb, cc = b[sel], cls[sel]
            clipped = np.stack([np.clip(bb[:, 0], r.y0, r.y1), np.clip(bb[:, 1], r.x0, r.x1),
                                np.clip(bb[:, 2], r.y0, r.y1), np.clip(bb[:, 3], r.x0, r.x1)], 1)
            area = (bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1])
            kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            inside = kept > 0
            keep = inside & (kept >= min_keep * area) & (clipped[:, 2] - clipped[:, 0] >= 1) \
                & (clipped[:, 3] - clipped[:, 1] >= 1)
            dropped += int((inside & ~keep).sum())
            crop, norm = _as_rgb(stack[r.frame][r.slices])
            norms.append(norm)
            rel = clipped[keep] - [r.y0, r.x0, r.y0, r.x0]
            out.append({"image": crop, "boxes": rel[:, [1, 0, 3, 2]].astype(np.float32), "labels": cc[keep]})
        return out

    tr, va = samples(train_r), samples(val_r)
    if not sum(len(s["boxes"]) for s in tr):
        raise InputError("no box lies in the training part; draw more boxes")
    if val_fraction is not None and not sum(len(s["boxes"]) for s in va):
        raise InputError("no box lies in the validation part; draw more boxes (or in another frame)")
    sizes = np.concatenate([np.sqrt((s["boxes"][:, 2] - s["boxes"][:, 0]) * (s["boxes"][:, 3] - s["boxes"][:, 1]))
                            for s in tr])
    n = int(len(b))
    defaults = {"epochs": int(np.clip(round(1500 / max(n, 1)), 20, 150)), "batch_size": 4,
                "object_size": float(np.median(sizes))}
    return DetectionSet(tr, va, names, train_r, val_r, norms[0], dropped, defaults)
