"""The start of a localizer fine-tuned from a base model (a shipped or the user's localizer).

The new network is the base's (its backbone, attention, box head, input size and normalization)
with the class head rebuilt for the user's classes: the rows (weights and bias) of every class the
base knows by name are the base's, new classes start as a fresh network's. The classes may be a
subset, a superset or a reordering of the base's. PyTorch is imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the settings that describe the network: a fine-tune takes the base's
ARCHITECTURE = ("input_size", "widths", "convs_per_stage", "dropout")
CLASS_HEAD = ("class_head.weight", "class_head.bias")


@dataclass
class LocalizerStart:
    state: dict  # the state_dict of the new network (its class head rebuilt)
    config: object  # LocalizerConfig of the new network (the user's class count)
    normalization: dict  # the base's
    class_head: dict  # the card's record: {"kept": [...], "new": [...], "dropped": [...]}


def start_from(folder: str | Path, classes: list[str], seed: int = 0) -> LocalizerStart:
    """The base localizer in ``folder`` rebuilt for ``classes`` (CorruptModel / ModelNotFound as
    :func:`.io.load_model`)."""
    import torch

    from .io import load_model
    from .model import LocalizerConfig, build_localizer

    base = load_model(folder, use_cache=False)
    classes = [str(c) for c in classes]
    config = LocalizerConfig.from_dict({**base.config.to_dict(), "n_classes": len(classes)})
    state = {k: v.detach().clone() for k, v in base.model.state_dict().items()}
    torch.manual_seed(seed)
    fresh = build_localizer(config).state_dict()
    old = list(base.class_names)
    for key in CLASS_HEAD:
        rows = fresh[key].detach().clone()
        for j, c in enumerate(classes):
            if c in old:
                rows[j] = state[key][old.index(c)]
        state[key] = rows
    kept = [c for c in classes if c in old]
    head = {"kept": kept, "new": [c for c in classes if c not in old], "dropped": [c for c in old if c not in classes]}
    return LocalizerStart(state, config, dict(base.normalization), head)


def with_base_architecture(settings: dict | None, config) -> dict:
    """``settings`` with the network's fields set to the base's ``config`` (a fine-tune cannot change
    them)."""
    d = config.to_dict()
    return {**dict(settings or {}), **{k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in ARCHITECTURE}}


__all__ = ["LocalizerStart", "start_from", "with_base_architecture", "ARCHITECTURE"]
