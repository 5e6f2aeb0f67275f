"""Image -> network input for the localizer (shared by training and inference).

Any 2D image (gray ``YX``, ``YXC`` with 1, 3 or 4 channels — alpha dropped — 8/16-bit or
float) becomes a normalized ``(3, h, w)`` float32 array at the model's input size: channels
are normalized jointly (the card's normalization, percentiles by default), a gray image is
repeated to 3 channels, and the image is resized (bilinear, antialiased) to the input size.
Boxes are predicted in 0..1 of the input and mapped back by the image's own height/width.

:func:`reference_input` is that recipe written plainly (the whole image converted to float,
``numpy.percentile`` twice, the gray channel repeated before the resize); :func:`to_input` gives
the same array, bit for bit, at a fraction of the time: the percentiles of 8/16-bit images come
from their histogram (exact order statistics, interpolated as ``numpy.percentile`` does), those
of float images from one ``numpy.partition``; the image is normalized straight into the
channels-first buffer, and a gray image is resized once and repeated afterwards. Images with
NaN/inf pixels and the ``scale`` normalization take the plain path.
"""
from __future__ import annotations

import numpy as np

from ...core.axes import InputError
from ...core.normalize import apply_normalization

EPS = 1e-20  # core.normalize.percentile_normalize's default: (x - lo) / (hi - lo + EPS)


def as_yxc(image: np.ndarray, channels: int = 3, repeat_gray: bool = True) -> np.ndarray:
    """A 2D image as ``(H, W, channels)`` (gray repeated, alpha dropped); clear error otherwise.
    ``repeat_gray=False`` leaves a gray image with one channel."""
    a = np.asarray(image)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.number)) or np.iscomplexobj(a):
        raise InputError(f"the localizer needs a numeric image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"the localizer needs a 2D gray, RGB or RGBA image (H, W[, C]), got shape {a.shape}")
    if min(a.shape[:2]) < 2:
        raise InputError(f"the image is too small to localize anything ({a.shape[0]}x{a.shape[1]} pixels)")
    if a.shape[-1] == 4:
        a = a[..., :3]  # alpha dropped
    elif a.shape[-1] == 2:
        a = a[..., :1]  # gray + alpha
    if channels == 3 and a.shape[-1] == 1 and repeat_gray:
        a = np.repeat(a, 3, axis=-1)
    elif channels == 1 and a.shape[-1] == 3:
        a = a.astype(np.float32).mean(-1, keepdims=True)
    return a


def _resize(x: np.ndarray, input_size: tuple[int, int]):
    """``(c, H, W)`` float32 -> ``(c, h, w)`` torch tensor (bilinear, antialiased)."""
    import torch
    from torch.nn import functional as F

    t = torch.from_numpy(x)[None]
    if tuple(t.shape[-2:]) != tuple(input_size):
        t = F.interpolate(t, size=tuple(input_size), mode="bilinear", align_corners=False, antialias=True)
    return t[0]


def reference_input(image: np.ndarray, input_size: tuple[int, int], normalization: dict,
                    channels: int = 3) -> np.ndarray:
    """The plain recipe :func:`to_input` must equal (see the module docstring)."""
    x = apply_normalization(as_yxc(image, channels), normalization)
    return _resize(np.ascontiguousarray(x.transpose(2, 0, 1)), input_size).numpy()


def _small_int(a: np.ndarray) -> bool:
    return a.dtype.kind in "ui" and a.dtype.itemsize <= 2


def _order_statistics(a: np.ndarray, ks: list[int], repeat: int) -> np.ndarray:
    """The values at the sorted positions ``ks`` of ``a``'s pixels, each pixel counted
    ``repeat`` times, as float32 (what sorting ``a.astype(float32)`` so repeated would give)."""
    if _small_int(a):
        flat = a.ravel()
        if a.dtype.kind == "u":  # numpy's single-threaded bincount: torch's is slower on a busy CPU
            offset = 0
            counts = np.bincount(flat)
        else:  # signed: shifted to start at 0
            offset = int(flat.min())
            counts = np.bincount(flat.astype(np.int32) - offset)
        cum = np.cumsum(counts * repeat)
        return (np.searchsorted(cum, ks, side="right") + offset).astype(np.float32)
    flat = a.astype(np.float32).ravel()  # a copy: partitioned in place
    base = sorted({k // repeat for k in ks})
    flat.partition(base)
    return flat[[k // repeat for k in ks]]


def percentiles(a: np.ndarray, qs, repeat: int = 1) -> list:
    """``numpy.percentile(a.astype(float32), q)`` (linear interpolation, ``q`` a Python
    number) for each ``q`` in ``qs``, equal to the last bit, for an image without NaN/inf
    whose channels are each counted ``repeat`` times; one pass over the pixels for all ``qs``."""
    n = a.size * repeat
    virtual = [(n - 1) * np.true_divide(q, 100) for q in qs]
    lows = [min(int(np.floor(v)), n - 1) for v in virtual]
    ks = sorted({k for lo in lows for k in (lo, min(lo + 1, n - 1))})
    value = dict(zip(ks, _order_statistics(a, ks, repeat)))
    out = []
    for v, lo in zip(virtual, lows):
        if v >= n - 1:
            out.append(value[n - 1])
            continue
        below, above = value[lo], value[lo + 1]
        gamma = float(v - lo)
        diff = above - below  # float32, interpolated as numpy does (from the nearer neighbour)
        out.append(above - diff * (1 - gamma) if gamma >= 0.5 else below + diff * gamma)
    return out


def to_input(image: np.ndarray, input_size: tuple[int, int], normalization: dict, channels: int = 3) -> np.ndarray:
    """``(channels, h, w)`` float32 network input of a 2D image (see the module docstring)."""
    a = as_yxc(image, channels, repeat_gray=False)
    if normalization.get("type") != "percentile" or (
            a.dtype.kind == "f" and not np.isfinite(a).all()):
        return reference_input(image, input_size, normalization, channels)
    repeat = channels if a.shape[-1] == 1 else 1
    lo, hi = percentiles(a, (normalization["pmin"], normalization["pmax"]), repeat)
    x = np.empty((a.shape[-1],) + a.shape[:2], np.float32)
    np.subtract(a.transpose(2, 0, 1), lo, out=x, dtype=np.float32)
    np.divide(x, (hi - lo) + np.float32(EPS), out=x)
    t = _resize(x, input_size)
    if repeat > 1:
        t = t.expand(repeat, -1, -1)
    return np.ascontiguousarray(t.numpy())


__all__ = ["as_yxc", "to_input", "reference_input", "percentiles"]
