"""Random augmentation of training patches, shared by every trainer (numpy and scipy only).

One draw of :func:`augment`, in this order (the order of the random numbers drawn, too):

1. with ``zoom`` > 0, a zoom of each spatial axis by its own factor in ``[1 / (1 + zoom), 1 + zoom]``
   (log-uniform), keeping the patch shape: zoom-in crops the centre, zoom-out pads with background;
2. with ``flips``, a random 90° turn (``np.rot90`` by k = 0..3) and, with probability 1/2, a
   mirror flip of the X axis (the 8 flips / turns, each equally likely);
3. an intensity jitter of the image only: ``x * U(gain) + U(-offset, offset)``;
4. with ``colour`` > 0 and an image of several channels (its channel axis: the one that is not
   Y or X), a colour jitter of the image only: every output channel ``c`` is
   ``x_c * U(1 - colour, 1 + colour) + sum_{d != c} x_d * U(-colour / 2, colour / 2)`` (each
   channel's own gain and a little of the others mixed in: stain strength and hue varying from
   slide to slide, e.g. H&E). A 1-channel image is left as it is (and draws nothing), so the
   option can be on for every data set.

The image, its label image and its boxes go through the same geometric transform: labels by
nearest neighbour (they stay integer labels), boxes ``(y0, x0, y1, x1)`` with exclusive
``y1``/``x1`` edges as in :class:`~napari_cnnvision.core.results.DetectionResult`, so that a box
drawn on the image before the transform is the box drawn after it.

The random numbers come from ``rng``, a :class:`numpy.random.Generator` (or anything with its
``integers``, ``random`` and ``uniform``: :class:`GlobalRandom` for trainers that seed
``np.random``, as stardist's Keras data generator does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..core.axes import InputError


@dataclass
class AugmentSettings:
    """What :func:`augment` does; the defaults are the recipe of the shipped models."""

    #: random 90° turns and mirror flips
    flips: bool = True
    #: the image is multiplied by a factor drawn uniformly from this range ...
    gain: tuple[float, float] = (0.6, 1.4)
    #: ... and shifted by one drawn from ``[-offset, offset]`` (images are normalized to ~0..1)
    offset: float = 0.2
    #: per-axis zoom by up to ``1 + zoom`` either way (0: off)
    zoom: float = 0.0
    #: colour jitter of multi-channel images: per-channel gain ``1 +- colour`` and cross-channel
    #: mixing ``+- colour / 2`` (0: off; 1-channel images are never changed by it)
    colour: float = 0.0

    def __post_init__(self):
        if isinstance(self.gain, list):
            self.gain = tuple(self.gain)
        self.validate()

    @property
    def jitter(self) -> bool:
        return tuple(self.gain) != (1.0, 1.0) or self.offset != 0

    def validate(self) -> None:
        g = self.gain
        if (not isinstance(g, (tuple, list)) or len(g) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in g) or not 0 < g[0] <= g[1]):
            raise InputError(f"augment.gain must be two numbers 0 < low <= high, got {g!r}")
        for name in ("offset", "zoom", "colour"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"augment.{name} must be a number >= 0, got {v!r}")
        if self.colour >= 1:
            raise InputError(f"augment.colour must be below 1 (a channel's gain 1 - colour stays > 0), "
                             f"got {self.colour!r}")
        if not isinstance(self.flips, bool):
            raise InputError(f"augment.flips must be true or false, got {self.flips!r}")


class Augmented(NamedTuple):
    image: np.ndarray
    labels: np.ndarray | None
    #: (n, 4) float boxes (y0, x0, y1, x1) of the transformed patch, ``None`` if none were given
    boxes: np.ndarray | None
    #: indices of the input boxes that are kept (a zoom-in can push boxes out of the patch)
    box_index: np.ndarray | None


class GlobalRandom:
    """``np.random``'s global state behind the :class:`numpy.random.Generator` methods that
    :func:`augment` uses, for stardist's data generator, which draws from (and is seeded by)
    ``np.random``."""

    @staticmethod
    def integers(n):
        return np.random.randint(n)

    @staticmethod
    def random():
        return np.random.rand()

    @staticmethod
    def uniform(low, high, size=None):
        return np.random.uniform(low, high, size)


# ------------------------------------------------------------------------------- geometry
def rot90_boxes(boxes: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Boxes of an ``shape`` (H, W) image after ``np.rot90(image, k)`` (counter-clockwise)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    h, w = shape
    for _ in range(k % 4):
        # pixel (r, c) goes to (w - 1 - c, r): an edge coordinate (y, x) to (w - x, y)
        b = np.stack([w - b[:, 3], b[:, 0], w - b[:, 1], b[:, 2]], axis=1)
        h, w = w, h
    return b


def flip_x_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes after mirroring the image's X axis (``image[:, ::-1]``)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], width - b[:, 3], b[:, 2], width - b[:, 1]], axis=1)


def _fit_to(a, shape, fill, y_axis=0):
    """Centre-crop or pad (with ``fill``) axes ``y_axis``, ``y_axis + 1`` of ``a`` to ``shape``."""
    for ax, n in zip((y_axis, y_axis + 1), shape):
        d = a.shape[ax] - n
        if d > 0:
            a = np.take(a, np.arange(d // 2, d // 2 + n), axis=ax)
        elif d < 0:
            pad = [(0, 0)] * a.ndim
            pad[ax] = (-d // 2, -d - (-d // 2))
            a = np.pad(a, pad, constant_values=fill)
    return a


def zoom_boxes(boxes: np.ndarray, factors, shape: tuple[int, int]):
    """Boxes after :func:`zoom_patch` by ``factors``: (boxes, indices of those still inside)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    for ax, (n, f) in enumerate(zip(shape, factors)):
        m = int(round(n * f))  # scipy.ndimage.zoom's output size; grid_mode maps edge 0..n to 0..m
        d = m - n
        shift = -(d // 2) if d > 0 else (-d) // 2
        for col in (ax, ax + 2):
            b[:, col] = np.clip(b[:, col] * (m / n) + shift, 0, n)
    keep = np.flatnonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    return b[keep], keep


def zoom_patch(x, y=None, factors=(1.0, 1.0), y_axis: int = 0):
    """Zoom an image patch (linear) and its label patch (nearest) by ``factors`` (per spatial
    axis), keeping the patch shape: zoom-in crops the centre, zoom-out pads with background
    (the image's minimum, label 0). The image's Y and X axes are ``y_axis``, ``y_axis + 1``."""
    from scipy.ndimage import zoom

    shape = x.shape[y_axis:y_axis + 2]
    f = [1.0] * x.ndim
    f[y_axis], f[y_axis + 1] = factors
    zx = _fit_to(zoom(x, f, order=1, mode="nearest", grid_mode=True), shape, float(np.min(x)), y_axis)
    if y is None:
        return zx, None
    zy = zoom(y, tuple(factors), order=0, mode="nearest", grid_mode=True)
    return zx, _fit_to(zy, shape, 0)


# ------------------------------------------------------------------------------- colour
def colour_matrix(rng, n: int, strength: float) -> np.ndarray:
    """The (n, n) matrix of one colour jitter: ``m[c, d]`` is how much input channel ``d`` goes
    into output channel ``c`` (the gains on the diagonal are drawn first, then the mixing row by row)."""
    m = np.diag(np.asarray(rng.uniform(1 - strength, 1 + strength, size=n), np.float64).reshape(n))
    off = np.asarray(rng.uniform(-strength / 2, strength / 2, size=n * n), np.float64).reshape(n, n)
    return m + off * (1 - np.eye(n))


def colour_jitter(rng, x: np.ndarray, strength: float, y_axis: int = 0) -> np.ndarray:
    """``x`` (YX, YXC or CYX with ``y_axis=1``) with its channels mixed by :func:`colour_matrix`;
    an image without a channel axis, or with one channel, is returned as it is (nothing drawn)."""
    if x.ndim != 3:
        return x
    c_axis = next(a for a in range(3) if a not in (y_axis, y_axis + 1))
    n = x.shape[c_axis]
    if n < 2:
        return x
    m = colour_matrix(rng, n, float(strength))
    out = np.tensordot(np.moveaxis(x, c_axis, -1), m.T, axes=1)  # out[..., c] = sum_d x[..., d] m[c, d]
    return np.moveaxis(out, -1, c_axis).astype(np.result_type(x.dtype, np.float32), copy=False)


# ------------------------------------------------------------------------------- the draw
def augment(rng, image: np.ndarray, labels: np.ndarray | None = None, *, boxes=None,
            settings: AugmentSettings | None = None, y_axis: int = 0) -> Augmented:
    """One random augmentation of ``image`` (Y, X at ``y_axis``, ``y_axis + 1``; e.g. YX, YXC or
    CYX with ``y_axis=1``) and, transformed alike, its ``labels`` (YX) and ``boxes``.

    Returns C-contiguous arrays; see the module docstring for what is drawn.
    """
    s = settings or AugmentSettings()
    x, y = image, labels
    shape = x.shape[y_axis:y_axis + 2]
    if y is not None and y.shape != shape:
        raise InputError(f"labels of shape {y.shape} do not fit an image of spatial shape {shape}")
    b = keep = None
    if boxes is not None:
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        keep = np.arange(len(b))
    if s.zoom > 0:
        lo, hi = -np.log1p(s.zoom), np.log1p(s.zoom)
        factors = np.exp(rng.uniform(lo, hi, size=2))
        x, y = zoom_patch(x, y, factors, y_axis)
        if b is not None:
            b, keep = zoom_boxes(b, factors, shape)
    if s.flips:
        k = int(rng.integers(4))
        x = np.rot90(x, k, axes=(y_axis, y_axis + 1))
        y = None if y is None else np.rot90(y, k)
        if b is not None:
            b = rot90_boxes(b, k, shape)
        if rng.random() < 0.5:
            x = np.flip(x, y_axis + 1)
            y = None if y is None else y[:, ::-1]
            if b is not None:
                b = flip_x_boxes(b, x.shape[y_axis + 1])
    if s.jitter:
        x = x * rng.uniform(*s.gain) + rng.uniform(-s.offset, s.offset)
    if s.colour > 0:
        x = colour_jitter(rng, x, s.colour, y_axis)
    return Augmented(np.ascontiguousarray(x), None if y is None else np.ascontiguousarray(y), b, keep)
