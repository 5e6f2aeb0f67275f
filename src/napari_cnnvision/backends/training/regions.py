"""Where a partial annotation is complete, and a train/val split of those regions.

A user paints 20 nuclei, not a whole image: only the *valid region* of each frame counts --
by default the bounding box of what was annotated there, or the bounding boxes of the regions
of an optional "fully annotated" mask. Everything outside is left out of the training set (it
never becomes background). Regions are ``(frame, y0, x0, y1, x1)`` with exclusive ends.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.axes import InputError


@dataclass(frozen=True)
class Region:
    frame: int  # index into the stack (0 for a single image)
    y0: int
    x0: int
    y1: int  # exclusive
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def split(self, fraction: float) -> tuple["Region", "Region"]:
        """Cut along the longer side: the first part keeps ``1 - fraction`` of it, the second the rest."""
        h, w = self.shape
        if h >= w:
            cut = self.y0 + int(round(h * (1 - fraction)))
            return Region(self.frame, self.y0, self.x0, cut, self.x1), Region(self.frame, cut, self.x0, self.y1, self.x1)
        cut = self.x0 + int(round(w * (1 - fraction)))
        return Region(self.frame, self.y0, self.x0, self.y1, cut), Region(self.frame, self.y0, cut, self.y1, self.x1)


def bbox_region(mask2d: np.ndarray, frame: int = 0) -> Region | None:
    """The bounding box of the ``True`` pixels of a 2-D mask (``None`` when there are none)."""
    rows, cols = np.flatnonzero(mask2d.any(axis=1)), np.flatnonzero(mask2d.any(axis=0))
    if not rows.size:
        return None
    return Region(frame, int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def mask_regions(valid2d: np.ndarray, frame: int = 0) -> list[Region]:
    """The bounding boxes of the connected regions of a "fully annotated" mask."""
    from scipy import ndimage

    lab, n = ndimage.label(np.asarray(valid2d) != 0)
    out = []
    for sl in ndimage.find_objects(lab):
        if sl is not None:
            out.append(Region(frame, sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
    return out


def valid_regions(annotated: np.ndarray, valid: np.ndarray | None = None) -> list[Region]:
    """The valid regions of every frame of ``annotated`` (a (T,) H, W boolean array: what was painted).

    Without ``valid``: per frame, the bounding box of the annotated pixels (frames with none give
    none). With ``valid`` (same shape; nonzero: fully annotated): the bounding boxes of its regions.
    """
    a = np.asarray(annotated, bool)
    stack = a if a.ndim == 3 else a[None]
    if valid is not None:
        v = np.asarray(valid)
        if v.shape != a.shape:
            raise InputError(f"the 'fully annotated' mask has shape {v.shape}, the annotation {a.shape}")
        v = v if v.ndim == 3 else v[None]
        return [r for t in range(len(v)) for r in mask_regions(v[t], t)]
    return [r for t in range(len(stack)) if (r := bbox_region(stack[t], t)) is not None]


def split_regions(regions: list[Region], weights: list[float], val_fraction: float, seed: int = 0,
                  min_side: int = 16) -> tuple[list[Region], list[Region]]:
    """``(train, val)`` regions: whole regions go to validation (seeded order) until they hold about
    ``val_fraction`` of the ``weights`` (object counts); a single region is cut in two along its
    longer side instead. Raises InputError when there is too little to hold some out."""
    if not 0 < val_fraction < 1:
        raise InputError(f"the validation fraction must lie between 0 and 1, got {val_fraction}")
    if not regions:
        raise InputError("nothing is annotated: paint some objects (or draw some boxes) first")
    if len(regions) == 1:
        r = regions[0]
        if max(r.shape) * min(val_fraction, 1 - val_fraction) < min_side:
            raise InputError(f"the annotated region ({r.shape[1]}x{r.shape[0]} pixels) is too small to hold "
                             f"part of it out for validation; annotate a larger area")
        tr, va = r.split(val_fraction)
        return [tr], [va]
    order = np.random.default_rng(seed).permutation(len(regions))
    total = float(sum(weights)) or float(len(regions))
    w = [float(x) if sum(weights) else 1.0 for x in weights]
    val, acc = [], 0.0
    for i in order:
        if len(val) == len(regions) - 1 or (val and acc >= val_fraction * total):
            break
        val.append(int(i))
        acc += w[i]
    train = [regions[i] for i in range(len(regions)) if i not in val]
    return train, [regions[i] for i in sorted(val)]
