"""Intensity normalization shared by every backend (numpy only)."""
from __future__ import annotations

import numpy as np


def percentile_normalize(
    x: np.ndarray,
    pmin: float = 1.0,
    pmax: float = 99.8,
    axis=None,
    eps: float = 1e-20,
    dtype=np.float32,
) -> np.ndarray:
    """Map the ``pmin``..``pmax`` percentiles of ``x`` to 0..1 (values outside are kept, not clipped).

    ``axis`` selects the axes the percentiles are computed over (``None``: all); for a
    YXC image pass ``axis=(0, 1)`` to normalize each channel on its own. Non-finite
    values are ignored when computing the percentiles and set to 0 in the output.
    """
    if not 0 <= pmin < pmax <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {pmin}, {pmax}")
    x = np.asarray(x)
    finite = np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else None
    xf = x.astype(dtype, copy=False)
    if finite is not None and not finite.all():
        if not finite.any():
            return np.zeros(x.shape, dtype)
        xf = np.where(finite, xf, np.nan).astype(dtype)
        lo = np.nanpercentile(xf, pmin, axis=axis, keepdims=True)
        hi = np.nanpercentile(xf, pmax, axis=axis, keepdims=True)
        out = (xf - lo) / (hi - lo + eps)
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(dtype, copy=False)
    lo = np.percentile(xf, pmin, axis=axis, keepdims=True)
    hi = np.percentile(xf, pmax, axis=axis, keepdims=True)
    return ((xf - lo) / (hi - lo + eps)).astype(dtype, copy=False)
