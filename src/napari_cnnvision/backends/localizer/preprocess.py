"""Image -> network input for the localizer (shared by training and inference).

Any 2D image (gray ``YX``, ``YXC`` with 1, 3 or 4 channels — alpha dropped — 8/16-bit or
float) becomes a normalized ``(3, h, w)`` float32 array at the model's input size: channels
are normalized jointly (the card's normalization, percentiles by default), a gray image is
repeated to 3 channels, and the image is resized (bilinear, antialiased) to the input size.
Boxes are predicted in 0..1 of the input and mapped back by the image's own height/width.
"""
from __future__ import annotations

import numpy as np

from ...core.axes import InputError
from ...core.normalize import apply_normalization


def as_yxc(image: np.ndarray, channels: int = 3) -> np.ndarray:
    """A 2D image as ``(H, W, channels)`` (gray repeated, alpha dropped); clear error otherwise."""
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
    if channels == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif channels == 1 and a.shape[-1] == 3:
        a = a.astype(np.float32).mean(-1, keepdims=True)
    return a


def to_input(image: np.ndarray, input_size: tuple[int, int], normalization: dict, channels: int = 3) -> np.ndarray:
    """``(channels, h, w)`` float32 network input of a 2D image (see the module docstring)."""
    import torch
    from torch.nn import functional as F

    a = as_yxc(image, channels)
    x = apply_normalization(a, normalization)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    if tuple(t.shape[-2:]) != tuple(input_size):
        t = F.interpolate(t, size=tuple(input_size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].numpy()
