"""A detector's default score and NMS thresholds, read without loading the network.

Where they come from, first found wins:

1. ``thresholds.json`` in the model folder: ``{"score": 0.4, "nms": 0.5}`` (written when
   thresholds are chosen on the validation split after training);
2. the card's ``thresholds`` entry (same keys);
3. the detector's ``config.json`` (``score_thresh``, ``nms_thresh``);
4. :data:`DEFAULTS`.

``thresholds_of`` answers in :func:`~napari_cnnvision.backends.dispatch.thresholds_for`'s
terms (``prob`` = the score threshold, ``nms``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...core.registry import CorruptModel, ModelCard

DEFAULTS = {"score": 0.5, "nms": 0.5}
FILE = "thresholds.json"


def _valid(d, where: str) -> dict:
    if not isinstance(d, dict):
        raise CorruptModel(f"{where}: thresholds must be a JSON object like {{\"score\": 0.5, \"nms\": 0.5}}")
    out = {}
    for k in ("score", "nms"):
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise CorruptModel(f"{where}: threshold {k!r} must be a number in 0..1, got {v!r}")
            out[k] = float(v)
    return out


def read_thresholds(card: ModelCard) -> dict:
    """``{"score": float, "nms": float}`` for ``card`` (see the module docstring)."""
    out = dict(DEFAULTS)
    folder = Path(card.path) if card.path and Path(card.path).is_dir() else None
    if folder is not None and (folder / "config.json").is_file():
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CorruptModel(f"cannot read {folder / 'config.json'}: {exc}") from exc
        if isinstance(cfg, dict):
            out.update(_valid({k: cfg[f"{k}_thresh"] for k in ("score", "nms") if f"{k}_thresh" in cfg},
                              str(folder / "config.json")))
    card_thr = card.extra.get("thresholds") if isinstance(card.extra, dict) else None
    if card_thr is not None:
        out.update(_valid(card_thr, f"model card of {card.name!r}"))
    if folder is not None:
        f = folder / FILE
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise CorruptModel(f"cannot read {f}: {exc}") from exc
            out.update(_valid(d, str(f)))
    return out


def thresholds_of(card: ModelCard) -> dict:
    t = read_thresholds(card)
    return {"prob": t["score"], "nms": t["nms"]}


__all__ = ["read_thresholds", "thresholds_of", "DEFAULTS", "FILE"]
