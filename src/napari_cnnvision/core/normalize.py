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


DEFAULT_PERCENTILES = (1.0, 99.8)
KINDS = ("percentile", "scale")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def resolve_normalization(card_normalization: dict | None, pmin: float | None = None, pmax: float | None = None,
                          model: str = "the model") -> dict:
    """The normalization to apply: the card's, unless the caller chose percentiles.

    ``pmin``/``pmax`` ``None`` mean "the card's"; either one given makes it a percentile
    normalization (the other taken from the card when the card is one, else the default
    1/99.8). Returns a normalization dict (``{"type": "percentile", "pmin", "pmax"}`` or
    ``{"type": "scale", "factor"}``) plus ``"source": "card" | "caller"``. A card with an
    unknown or malformed normalization raises
    :class:`~napari_cnnvision.core.registry.CorruptModel`.
    """
    from .axes import InputError
    from .registry import CorruptModel

    card = dict(card_normalization) if card_normalization else {"type": "percentile", "pmin": DEFAULT_PERCENTILES[0],
                                                                 "pmax": DEFAULT_PERCENTILES[1]}
    kind = card.get("type", "percentile")
    if kind not in KINDS:
        raise CorruptModel(f"{model}: the model card's normalization type {kind!r} is unknown "
                           f"(known: {', '.join(KINDS)})")
    if pmin is not None or pmax is not None:
        lo, hi = (card.get("pmin", DEFAULT_PERCENTILES[0]), card.get("pmax", DEFAULT_PERCENTILES[1])) \
            if kind == "percentile" else DEFAULT_PERCENTILES
        lo, hi = (lo if pmin is None else pmin), (hi if pmax is None else pmax)
        if not (_number(lo) and _number(hi) and 0 <= lo < hi <= 100):
            raise InputError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got {lo}, {hi}")
        return {"type": "percentile", "pmin": float(lo), "pmax": float(hi), "source": "caller"}
    if kind == "percentile":
        lo, hi = card.get("pmin", DEFAULT_PERCENTILES[0]), card.get("pmax", DEFAULT_PERCENTILES[1])
        if not (_number(lo) and _number(hi) and 0 <= lo < hi <= 100):
            raise CorruptModel(f"{model}: the model card's normalization percentiles must satisfy "
                               f"0 <= pmin < pmax <= 100, got {lo!r}, {hi!r}")
        return {"type": "percentile", "pmin": float(lo), "pmax": float(hi), "source": "card"}
    factor = card.get("factor")
    if not (_number(factor) and factor > 0):
        raise CorruptModel(f"{model}: the model card's 'scale' normalization needs a positive 'factor', "
                           f"got {factor!r}")
    return {"type": "scale", "factor": float(factor), "source": "card"}


def apply_normalization(x: np.ndarray, normalization: dict, dtype=np.float32) -> np.ndarray:
    """Normalize ``x`` as a dict from :func:`resolve_normalization` says (channels jointly)."""
    kind = normalization.get("type")
    if kind == "percentile":
        return percentile_normalize(x, normalization["pmin"], normalization["pmax"], dtype=dtype)
    if kind == "scale":
        x = np.asarray(x)
        out = x.astype(dtype) * dtype(normalization["factor"])
        if np.issubdtype(x.dtype, np.floating):
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out
    raise ValueError(f"unknown normalization type {kind!r} (known: {', '.join(KINDS)})")


def normalize_for(x: np.ndarray, card_normalization: dict | None, pmin: float | None = None,
                  pmax: float | None = None, model: str = "the model") -> tuple[np.ndarray, dict]:
    """``x`` normalized as the model card says unless ``pmin``/``pmax`` override it;
    returns ``(normalized, what_was_used)`` (see :func:`resolve_normalization`)."""
    used = resolve_normalization(card_normalization, pmin, pmax, model)
    return apply_normalization(x, used), used
