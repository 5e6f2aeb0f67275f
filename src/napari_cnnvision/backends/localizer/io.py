"""Save and load localizer model folders.

A folder holds ``config.json`` (architecture, class names, normalization), ``weights.pt``
(``torch.save`` of the state_dict only) and the ``model.json`` card (task ``localize``,
backend ``localizer``). Weights are read with ``torch.load(..., weights_only=True)``: tensors
and plain containers only, never arbitrary pickled objects. Anything unreadable raises
:class:`~napari_cnnvision.core.registry.CorruptModel` naming the folder.

PyTorch is imported inside the functions that need it; :func:`read_config` only reads JSON.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ...core.cache import LRUCache
from ...core.io import staged_dir
from ...core.registry import CorruptModel, ModelCard, ModelNotFound, write_card
# the torch-file checks every model folder of the plugin shares (state_dict loading, error wording, cache key)
from ..torch_weights import cpu_state_dict as _state_dict, folder_cache_key as _cache_key
from ..torch_weights import load_error_reason as _load_error_reason, short_error as _short

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
FORMAT = "napari-cnnvision-localizer"
FORMAT_VERSION = 1
DEFAULT_NORMALIZATION = {"type": "percentile", "pmin": 1.0, "pmax": 99.8}

_CACHE = LRUCache(2)  # (path, mtimes) -> LoadedLocalizer
_LOCK = threading.Lock()


@dataclass
class LoadedLocalizer:
    model: object  # Localizer in eval mode, on the CPU
    config: object  # LocalizerConfig
    class_names: list[str]
    normalization: dict
    folder: str


def read_config(folder: str | Path) -> dict:
    """The parsed ``config.json`` (JSON only): ``{"localizer": dict, "classes": [...], "normalization": dict}``."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        if not folder.exists():
            raise ModelNotFound(f"no model folder at {folder}")
        raise CorruptModel(f"the localizer model folder {folder} has no {CONFIG_NAME}")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"cannot read {path} in the localizer model folder {folder}: {_short(exc)}") from exc
    if not isinstance(d, dict) or not isinstance(d.get("localizer"), dict):
        raise CorruptModel(f"{path} is not a localizer config (no 'localizer' section); the model folder "
                           f"{folder} is damaged")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CorruptModel(f"{path}: 'classes' must be a non-empty list of class names")
    norm = d.get("normalization", DEFAULT_NORMALIZATION)
    if not isinstance(norm, dict):
        raise CorruptModel(f"{path}: 'normalization' must be an object")
    return {"localizer": d["localizer"], "classes": classes, "normalization": norm}


def save_model(folder: str | Path, model, config, class_names: list[str], *, name: str | None = None,
               normalization: dict | None = None, description: str = "", training: dict | None = None,
               metrics: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete localizer model folder atomically (assembled in a temporary sibling and
    swapped into place by :func:`~napari_cnnvision.core.io.staged_dir`); returns the folder. ``model`` is a ``Localizer`` or its state_dict,
    ``config`` its ``LocalizerConfig``; ``extra_files`` maps file names to text."""
    import torch

    folder = Path(folder)
    name = name or folder.name
    class_names = [str(c) for c in class_names]
    if len(class_names) != config.n_classes:
        raise ValueError(f"{len(class_names)} class names for a localizer with {config.n_classes} classes")
    normalization = dict(normalization or DEFAULT_NORMALIZATION)
    cfg = {"format": FORMAT, "version": FORMAT_VERSION, "localizer": config.to_dict(), "classes": class_names,
           "normalization": normalization}
    card = ModelCard(name=name, task="localize", backend="localizer", classes=class_names, axes="YXC",
                     channels=config.in_channels, normalization=normalization,
                     description=description or (f"single-object localizer: CNN backbone (widths "
                                                 f"{list(config.widths)}), class head + box head, input "
                                                 f"{config.input_size[0]}x{config.input_size[1]}"),
                     training=training or {}, metrics=metrics or {})
    state = _state_dict(model)
    bad = [f for f in (extra_files or {}) if Path(f).name != f or f in (CONFIG_NAME, WEIGHTS_NAME, "model.json")]
    if bad:
        raise ValueError(f"bad extra file name {bad[0]!r}")
    with staged_dir(folder) as tmp:  # readers see the old or the complete new folder, never a mix
        with open(tmp / WEIGHTS_NAME, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
        write_card(card, tmp)
    return folder


def read_state_dict(path: str | Path, where: str) -> dict:
    """A weights-only state_dict from ``path``; :class:`CorruptModel` naming ``where`` otherwise."""
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors, refused non-tensor objects
        raise CorruptModel(f"cannot read the weights {path.name} of {where}: {_load_error_reason(exc)}") from exc
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CorruptModel(f"{path.name} of {where} does not hold a state_dict (parameter names -> tensors)")
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CorruptModel(f"the weights of {where} contain NaN/inf values ({k})")
    return state


def load_model(folder: str | Path, use_cache: bool = True) -> LoadedLocalizer:
    """Load a localizer folder (eval mode, CPU); the last two are kept in an LRU cache whose
    key includes the files' modification times, so a re-saved folder is re-read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFound(f"no model folder at {folder}")
    key = _cache_key(folder)
    if use_cache:
        with _LOCK:
            hit = _CACHE.get(key)
        if hit is not None:
            return hit
    loaded = _load(folder)
    if use_cache:
        with _LOCK:
            _CACHE.put(key, loaded)
    return loaded


def _load(folder: Path) -> LoadedLocalizer:
    from .model import LocalizerConfig, build_localizer

    meta = read_config(folder)
    try:
        config = LocalizerConfig.from_dict(meta["localizer"])
    except (TypeError, ValueError) as exc:
        raise CorruptModel(f"the localizer config in {folder / CONFIG_NAME} is invalid: {exc}") from exc
    if config.n_classes != len(meta["classes"]):
        raise CorruptModel(f"{folder / CONFIG_NAME}: {len(meta['classes'])} class names for "
                           f"{config.n_classes} classes")
    wpath = folder / WEIGHTS_NAME
    if not wpath.is_file():
        raise CorruptModel(f"the localizer model folder {folder} has no {WEIGHTS_NAME}")
    state = read_state_dict(wpath, f"the localizer model folder {folder}")
    model = build_localizer(config)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CorruptModel(f"the weights in {wpath.name} do not fit the localizer described by {CONFIG_NAME} "
                           f"in the model folder {folder}: {_short(exc, 300)}") from exc
    model.eval()
    return LoadedLocalizer(model, config, list(meta["classes"]), dict(meta["normalization"]), str(folder))


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


__all__ = ["save_model", "load_model", "read_config", "read_state_dict", "clear_cache", "LoadedLocalizer",
           "CONFIG_NAME", "WEIGHTS_NAME"]
