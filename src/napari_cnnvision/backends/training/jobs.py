"""The detector training job of the compute worker (``yolo.train``): samples from
:mod:`.detection` in, a registered model folder out. PyTorch is imported inside the function."""
from __future__ import annotations

import math
from pathlib import Path

from ...core.axes import InputError
from ...core.progress import NULL_PROGRESS

#: a fresh network's architecture (the shipped ``bloodcells-yolo`` recipe's)
FRESH_YOLO = {"arch": "yolo", "in_channels": 3, "input_size": 640, "scale": 1.0, "widths": [16, 32, 64, 96, 128],
              "depths": [0, 1, 1, 1, 1], "stride": 8, "head_channels": 64, "score_thresh": 0.25, "nms_thresh": 0.5}


def _with_classes(base_folder, classes: list[str]):
    """The base detector rebuilt for ``classes``: every weight whose shape still fits is kept
    (the class head is new when the class count differs)."""
    from ..detection.models import build_detector, load_detector

    base, cfg = load_detector(base_folder)
    cfg = {**cfg, "classes": list(classes)}
    model = build_detector(cfg)
    own = model.state_dict()
    kept = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    return model, cfg, sorted(set(own) - set(kept))


def detector_train_job(progress=NULL_PROGRESS, train=(), val=(), classes=(), name: str = "detector",
                       base=None, config: dict | None = None, settings: dict | None = None,
                       normalization: dict | None = None, data: dict | None = None, out_dir=None,
                       resume: bool = False):
    """Train a detector on ``train`` / ``val`` samples and save it as ``out_dir/name`` (default: the
    user model folder, so the registry lists it at once). ``base``: a card payload (fine-tune,
    heads rebuilt for ``classes``) or None (a fresh network of ``config``, default :data:`FRESH_YOLO`).
    ``settings``: :class:`~..detection.train.DetectorTrainSettings` fields (former names too; a bad
    value is an InputError naming it). An existing model of that name is refused, never overwritten.
    A checkpoint is written after every epoch (:mod:`..checkpoint`); ``resume`` continues the
    interrupted run ``name`` (with its settings when ``settings`` is None)."""
    from ...core.registry import ModelRegistry
    from ..checkpoint import guarded_run, resume_settings
    from ..detection.models import build_detector
    from ..detection.train import DetectorTrainSettings, train_detector
    from ..dispatch import card_from_payload
    from .naming import check_new_name

    registry = ModelRegistry(user_dir=out_dir) if out_dir else ModelRegistry()
    settings = resume_settings(registry.user_dir, str(name or "").strip(), settings, resume)
    st = DetectorTrainSettings.from_dict(settings)  # InputError naming a bad field, before anything is built
    if "warmup_steps" not in (settings or {}):
        st.warmup_steps = max(1, min(100, st.epochs * math.ceil(len(train) / st.batch_size) // 10))
    name = check_new_name(name, registry)
    classes = [str(c) for c in classes]
    if base is not None:
        card = card_from_payload(base)
        if card.backend != "yolo" or not card.path:
            raise InputError(f"model {card.name!r} ({card.backend}) cannot be fine-tuned here; choose a YOLO model "
                             "or a fresh network")
        model, cfg, rebuilt = _with_classes(card.path, classes)
        base_name = card.name
    else:
        cfg = {**FRESH_YOLO, **(config or {}), "classes": classes}
        model, rebuilt, base_name = build_detector(cfg), [], None
    fields = {"name": name, "description": f"YOLO-style detector trained in napari on {', '.join(classes)}",
              "normalization": normalization or {"type": "scale", "factor": 1 / 255},
              "training": {"data": data or {}, "base_model": base_name, "rebuilt_weights": rebuilt[:20],
                           "command": "napari-cnnvision Train widget"}}
    with guarded_run(registry.user_dir, name):
        return train_detector(model, cfg, list(train), list(val), Path(registry.user_dir) / name, st, progress,
                              fields, resume=resume)
