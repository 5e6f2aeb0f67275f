"""Save and load U-Net model folders.

A folder holds ``config.json`` (architecture, normalization, thresholds), ``weights.pt``
(``torch.save`` of the state_dict only) and the ``model.json`` card. Weights are read
with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never
arbitrary pickled objects. Anything unreadable raises
:class:`~napari_cnnvision.core.registry.CorruptModel` naming the folder.

PyTorch is imported inside the functions that need it; :func:`read_config` and
:func:`thresholds_of` only read JSON.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ...core.cache import LRUCache
from ...core.io import replace_dir
from ...core.registry import CorruptModel, ModelCard, ModelNotFound, write_card
from ..torch_weights import cpu_state_dict as _state_dict, folder_cache_key as _cache_key
from ..torch_weights import load_error_reason as _load_error_reason, short_error as _short

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
FORMAT = "napari-cnnvision-unet"
FORMAT_VERSION = 1
DEFAULT_THRESHOLDS = {"seed": 0.5, "fg": 0.5, "min_size": 8}
CACHE_SIZE = 2

_CACHE = LRUCache(CACHE_SIZE)  # (path, mtimes) -> LoadedUNet
_LOCK = threading.Lock()


@dataclass
class LoadedUNet:
    model: object  # torch.nn.Module in eval mode, on the CPU
    config: object  # UNetConfig
    normalization: dict
    thresholds: dict
    folder: str
    key: tuple


def _check_thresholds(thr, where) -> dict:
    if not isinstance(thr, dict):
        raise CorruptModel(f"{where}: 'thresholds' must be an object")
    out = dict(DEFAULT_THRESHOLDS)
    for k in ("seed", "fg"):
        if k in thr:
            v = thr[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise CorruptModel(f"{where}: threshold {k!r} must be a number in 0..1, not {v!r}")
            out[k] = float(v)
    if "min_size" in thr:
        v = thr["min_size"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise CorruptModel(f"{where}: threshold 'min_size' must be a number >= 0, not {v!r}")
        out["min_size"] = int(v)
    return out


def read_config(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a U-Net folder (JSON only; no torch).

    Returns ``{"unet": dict, "normalization": dict, "thresholds": dict}`` with the
    thresholds completed by the defaults.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        if not folder.exists():
            raise ModelNotFound(f"no model folder at {folder}")
        raise CorruptModel(f"the U-Net model folder {folder} has no {CONFIG_NAME}")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"cannot read {path} in the U-Net model folder {folder}: {_short(exc)}") from exc
    if not isinstance(d, dict) or not isinstance(d.get("unet"), dict):
        raise CorruptModel(f"{path} is not a U-Net config (no 'unet' section); the model folder {folder} is damaged")
    norm = d.get("normalization", {"type": "percentile", "pmin": 1.0, "pmax": 99.8})
    if not isinstance(norm, dict):
        raise CorruptModel(f"{path}: 'normalization' must be an object")
    return {"unet": d["unet"], "normalization": norm,
            "thresholds": _check_thresholds(d.get("thresholds", {}), str(path)),
            "format_version": d.get("version", FORMAT_VERSION)}


def thresholds_of(card: ModelCard) -> dict:
    """The model's stored thresholds without loading the network.

    ``prob`` (the seed threshold, the name the segment widget uses), ``seed``, ``fg`` and
    ``min_size``; empty when the card has no folder.
    """
    if not card.path:
        return {}
    thr = read_config(card.path)["thresholds"]
    return {"prob": thr["seed"], **thr}


def save_model(
    folder: str | Path,
    model,
    config,
    *,
    name: str | None = None,
    pmin: float = 1.0,
    pmax: float = 99.8,
    thresholds: dict | None = None,
    description: str = "",
    training: dict | None = None,
    metrics: dict | None = None,
    classes: list[str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a complete U-Net model folder atomically; returns the folder.

    ``model`` is an ``nn.Module`` or its state_dict, ``config`` its ``UNetConfig``. The
    folder is assembled in a temporary sibling and renamed into place, so readers see
    either the old folder or the complete new one. ``extra_files`` maps file names to
    text (e.g. ``training.json``).
    """
    import torch

    folder = Path(folder)
    name = name or folder.name
    thr = _check_thresholds({**DEFAULT_THRESHOLDS, **(thresholds or {})}, f"thresholds for {folder}")
    normalization = {"type": "percentile", "pmin": float(pmin), "pmax": float(pmax)}
    cfg = {"format": FORMAT, "version": FORMAT_VERSION, "unet": config.to_dict(),
           "normalization": normalization, "thresholds": thr,
           "classes": ["background", "interior", "boundary"]}
    card = ModelCard(name=name, task="segment", backend="unet", classes=list(classes or ["nucleus"]),
                     axes="YX" if config.in_channels == 1 else "YXC", channels=config.in_channels,
                     normalization=normalization,
                     description=description or (f"U-Net ({config.upsampling} upsampling, depth {config.depth}, "
                                                 f"{config.base_filters} base filters), 3 classes + watershed"),
                     training=training or {}, metrics=metrics or {})
    state = _state_dict(model)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        with open(tmp / WEIGHTS_NAME, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        for fname, text in (extra_files or {}).items():
            if Path(fname).name != fname or fname in (CONFIG_NAME, WEIGHTS_NAME, "model.json"):
                raise ValueError(f"bad extra file name {fname!r}")
            (tmp / fname).write_text(text)
        write_card(card, tmp)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, folder)  # the old or the new complete folder is there at every instant
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _read_state_dict(path: Path, folder: Path) -> dict:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the load fails anyway
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors, refused non-tensor objects
        raise CorruptModel(f"cannot read the weights {path.name} of the U-Net model folder {folder}: "
                           f"{_load_error_reason(exc)}") from exc
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptModel(f"{path.name} in the U-Net model folder {folder} does not hold a state_dict "
                           "(a mapping of parameter names to tensors)")
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CorruptModel(f"the weights in the U-Net model folder {folder} contain NaN/inf values ({k})")
    return state


def _state_mismatch(expected: dict, got: dict) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} with another shape (e.g. {shapes[0]})")
    return "; ".join(parts)


def load_model(folder: str | Path, use_cache: bool = True) -> LoadedUNet:
    """Load a U-Net folder (eval mode, CPU); the last :data:`CACHE_SIZE` are kept in memory.

    The cache key includes the files' modification times, so a re-saved folder is
    re-read.
    """
    from .model import UNetConfig, build_unet

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFound(f"no model folder at {folder}")
    key = _cache_key(folder)
    if use_cache:
        with _LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
    meta = read_config(folder)
    try:
        config = UNetConfig.from_dict(meta["unet"])
    except (TypeError, ValueError) as exc:
        raise CorruptModel(f"the U-Net config in {folder / CONFIG_NAME} is invalid: {exc}") from exc
    wpath = folder / WEIGHTS_NAME
    if not wpath.is_file():
        raise CorruptModel(f"the U-Net model folder {folder} has no {WEIGHTS_NAME}")
    state = _read_state_dict(wpath, folder)
    model = build_unet(config)
    problem = _state_mismatch(model.state_dict(), state)
    if not problem:
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            problem = _short(exc, 300)
    if problem:
        raise CorruptModel(f"the weights in {wpath.name} do not fit the U-Net described by {CONFIG_NAME} "
                           f"in the model folder {folder} (parameters: {problem})")
    model.eval()
    norm = meta["normalization"]
    pmin, pmax = norm.get("pmin", 1.0), norm.get("pmax", 99.8)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (pmin, pmax)):
        raise CorruptModel(f"{folder / CONFIG_NAME}: normalization pmin/pmax must be numbers")
    loaded = LoadedUNet(model, config, {"type": "percentile", "pmin": float(pmin), "pmax": float(pmax)},
                        meta["thresholds"], str(folder), key)
    if use_cache:
        with _LOCK:
            _CACHE.put(key, loaded)
    return loaded


__all__ = ["save_model", "load_model", "read_config", "thresholds_of", "LoadedUNet",
           "CONFIG_NAME", "WEIGHTS_NAME", "DEFAULT_THRESHOLDS"]
