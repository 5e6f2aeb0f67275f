"""Helpers of the model folders that hold a PyTorch ``weights.pt`` beside a ``config.json``
(U-Net, localizer): short error texts, weights-only load errors, CPU state dicts, cache keys.

No torch import here: the functions receive torch objects from their callers.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it)."""
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def cpu_state_dict(model_or_state) -> dict:
    """A module's (or a state_dict's) tensors as contiguous CPU copies, for saving."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    if not isinstance(state, dict):
        raise TypeError(f"expected a torch module or a state_dict, got {type(model_or_state).__name__}")
    # contiguous CPU copies: no views into larger storages, no device tensors
    return OrderedDict((k, v.detach().to("cpu").clone().contiguous()) for k, v in state.items())


def load_error_reason(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in words for the user."""
    import pickle

    msg = str(exc)
    if isinstance(exc, EOFError) or "unexpected EOF" in msg:
        return "the file is empty or truncated"
    if "zip archive" in msg or "central directory" in msg:
        return "not a complete PyTorch file (truncated or damaged)"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in msg:
        detail = next((line.strip() for line in msg.splitlines() if "GLOBAL" in line or "global" in line), "")
        return ("it is not a weights-only PyTorch state_dict: it holds other Python objects, which are never "
                "loaded, or is not a PyTorch file at all" + (f" ({detail[:200]})" if detail else ""))
    return f"damaged or not a PyTorch state_dict ({short_error(exc)})"


def folder_cache_key(folder: Path) -> tuple:
    """A cache key that changes when the folder's config or weights are re-saved."""
    cfg, w = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    try:
        sc, sw = cfg.stat(), w.stat()
    except FileNotFoundError:
        return (str(folder.resolve()), None)
    return (str(folder.resolve()), sc.st_mtime_ns, sw.st_mtime_ns, sw.st_size)
