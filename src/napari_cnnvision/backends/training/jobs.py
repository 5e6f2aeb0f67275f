"""The detector training job of the compute worker (``detector.train``, formerly ``yolo.train``):
samples from :mod:`.detection` in, a registered model folder out. It trains the YOLO-style
detector and torchvision's Faster R-CNN alike: a base model of either (shipped or the user's)
is fine-tuned with its heads rebuilt for the user's classes, or a fresh network of a config is
trained from scratch. After training, the score threshold with the best F1 on the validation
samples is written to the model's ``thresholds.json`` (as the shipped recipes do).
PyTorch is imported inside the functions."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.progress import NULL_PROGRESS

#: a fresh network's architecture (the shipped ``bloodcells-yolo`` recipe's)
FRESH_YOLO = {"arch": "yolo", "in_channels": 3, "input_size": 640, "scale": 1.0, "widths": [16, 32, 64, 96, 128],
              "depths": [0, 1, 1, 1, 1], "stride": 8, "head_channels": 64, "score_thresh": 0.25, "nms_thresh": 0.5}
#: a fresh Faster R-CNN (``config={"arch": "fasterrcnn_mobilenet_v3_large_fpn"}``): the shipped
#: ``bloodcells-frcnn`` recipe's architecture
FRESH_FRCNN = {"arch": "fasterrcnn_mobilenet_v3_large_fpn", "in_channels": 3, "input_size": 640, "scale": 0.5,
               "score_thresh": 0.25, "nms_thresh": 0.5, "anchor_sizes": [16, 32, 64, 128, 256],
               "box_head": {"conv": [], "fc": [128]}, "rpn_pre_nms_top_n_train": 1000,
               "rpn_post_nms_top_n_train": 600, "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
               "box_batch_size_per_image": 128, "box_detections_per_img": 300}
#: the backends of the base models this job fine-tunes
TRAINABLE_BACKENDS = ("yolo", "fasterrcnn")
#: the score thresholds tried on the validation samples (those of scripts/measure_detector.py)
SCORE_GRID = tuple(round(0.05 * i, 2) for i in range(2, 17))  # 0.1 .. 0.8


def _with_classes(base_folder, classes: list[str]):
    """The base detector rebuilt for ``classes``: every weight whose shape still fits is kept;
    when the class set differs, the class head (YOLO's class convolution, Faster R-CNN's box
    predictor) keeps the rows of the classes the base knows by name and starts the new classes
    fresh (:func:`~..detection.models.class_rows_for`). One network is built: the base's weights
    are read, not loaded into one. Returns ``(model, config, rebuilt weight names, class_head)``,
    ``class_head`` the card's record: ``{"kept": [...], "new": [...], "dropped": [...]}``."""
    from ...core.registry import CorruptModel
    from ..detection.models import (WEIGHTS_NAME, _read_state, build_detector, class_keys, class_rows_for,
                                    read_config)

    folder = Path(base_folder)
    old = read_config(folder)["classes"]
    cfg = {**read_config(folder), "classes": list(classes)}
    state = _read_state(folder / WEIGHTS_NAME, folder)
    model = build_detector(cfg)
    own = model.state_dict()
    foreign = sorted(set(state) - set(own))
    if foreign:
        raise CorruptModel(f"the weights in {folder / WEIGHTS_NAME} do not fit the {cfg['arch']} detector of its "
                           f"config ({len(foreign)} unknown, first: {foreign[0]})")
    kept = {k: v for k, v in state.items() if own[k].shape == v.shape}  # float16 files load as float32
    mapped, known = {}, list(classes)
    if old != list(classes):  # the class rows are remapped by name (a mere reordering too)
        for k in class_keys(cfg["arch"]):
            kept.pop(k, None)
        mapped, known = class_rows_for(state, own, cfg["arch"], old, list(classes))
    rebuilt = sorted(set(own) - set(kept))
    model.load_state_dict({**kept, **mapped}, strict=False)
    head = {"kept": known, "new": [c for c in classes if c not in known],
            "dropped": [c for c in old if c not in classes]}
    return model, cfg, rebuilt, head


def _base_card(base):
    """The base model's card; InputError for a model this job cannot fine-tune."""
    from ..dispatch import card_from_payload

    card = card_from_payload(base)
    if card.task != "detect":
        raise InputError(f"model {card.name!r} is a {card.task} model, not a detection model; choose a detector "
                         f"({' or '.join(TRAINABLE_BACKENDS)}) or a fresh network as the base")
    if card.backend not in TRAINABLE_BACKENDS:
        raise InputError(f"model {card.name!r} ({card.backend}) cannot be fine-tuned here; choose a YOLO or "
                         "Faster R-CNN model, or a fresh network")
    if not card.path:
        raise InputError(f"model {card.name!r} is not downloaded yet; use it once before fine-tuning it")
    return card


def _fresh_config(config: dict | None, classes: list[str]) -> dict:
    config = dict(config or {})
    arch = config.get("arch", "yolo")
    fresh = FRESH_YOLO if arch == "yolo" else {**FRESH_FRCNN, "arch": arch}
    return {**fresh, **config, "classes": classes}


def _truths(samples):
    """(boxes y0, x0, y1, x1; class ids 0..K-1) of the trainer's samples, for precision_recall."""
    return [(np.asarray(s["boxes"], np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]],
             np.asarray(s["labels"], np.int64).reshape(-1) - 1) for s in samples]


def choose_score_threshold(model, val: list[dict], classes: list[str], device: str = "cpu") -> dict:
    """The score threshold of :data:`SCORE_GRID` with the best F1 (IoU 0.5, all classes together)
    on ``val``; ties go to the one nearest 0.5. ``{"score", "f1", "precision", "recall"}``."""
    import torch

    from ..detection.evaluate import precision_recall
    from ..detection.models import set_thresholds
    from ..detection.train import detect_samples

    target = model.roi_heads if hasattr(model, "roi_heads") else model
    old = target.score_thresh
    set_thresholds(model, 0.001)
    try:
        dets = detect_samples(model, val, torch.device(device))
    finally:
        set_thresholds(model, old)
    preds = [(d["boxes"].reshape(-1, 4)[:, [1, 0, 3, 2]], d["labels"] - 1, d["scores"]) for d in dets]
    truths = _truths(val)
    prs = {t: precision_recall(preds, truths, classes, t)["all"] for t in SCORE_GRID}
    f1 = {t: (0.0 if math.isnan(p["f1"]) else p["f1"]) for t, p in prs.items()}
    best = max(f1, key=lambda t: (f1[t], -abs(t - 0.5)))
    p = prs[best]
    return {"score": best, "f1": round(f1[best], 4), "precision": round(float(np.nan_to_num(p["precision"])), 4),
            "recall": round(float(np.nan_to_num(p["recall"])), 4)}


def _record_thresholds(folder: Path, chosen: dict, nms: float) -> None:
    """``thresholds.json`` (read by :mod:`..detection.thresholds`) and the card's val figures."""
    from ...core.io import atomic_write_text
    from ...core.registry import read_card, write_card
    from ..detection.thresholds import FILE

    atomic_write_text(folder / FILE, json.dumps({"score": chosen["score"], "nms": float(nms),
                                                 "chosen_on": "val split, best F1 at IoU 0.5"}, indent=1) + "\n")
    card = read_card(folder)
    card.metrics.setdefault("val", {}).update({"score_thresh": chosen["score"], "f1@score_thresh": chosen["f1"],
                                               "precision@score_thresh": chosen["precision"],
                                               "recall@score_thresh": chosen["recall"]})
    write_card(card, folder)


def default_warmup(st, n_train: int) -> int:
    """Warm-up steps: a tenth of the planned steps, at most 100. Under a time budget the epoch
    count is only a cap (the widget and CLI set it huge), so plan on about ten epochs: a 4-minute
    fine-tune of 10 images (a few steps per epoch) must not spend its whole run warming up."""
    per_epoch = max(1, math.ceil(n_train / st.batch_size))
    planned = st.epochs * per_epoch
    if st.time_budget:
        planned = min(planned, 10 * per_epoch)
    return max(1, min(100, planned // 10))


def detector_train_job(progress=NULL_PROGRESS, train=(), val=(), classes=(), name: str = "detector",
                       base=None, config: dict | None = None, settings: dict | None = None,
                       normalization: dict | None = None, data: dict | None = None, out_dir=None,
                       resume: bool = False):
    """Train a detector on ``train`` / ``val`` samples and save it as ``out_dir/name`` (default: the
    user model folder, so the registry lists it at once). ``base``: a card payload of a YOLO or
    Faster R-CNN model (fine-tune, heads rebuilt for ``classes``) or None (a fresh network of
    ``config``: default :data:`FRESH_YOLO`, or :data:`FRESH_FRCNN` for a Faster R-CNN ``arch``).
    ``settings``: :class:`~..detection.train.DetectorTrainSettings` fields (former names too; a bad
    value is an InputError naming it). An existing model of that name is refused, never overwritten.
    A checkpoint is written after every epoch (:mod:`..checkpoint`); ``resume`` continues the
    interrupted run ``name`` (with its settings when ``settings`` is None). The score threshold is
    then chosen on ``val`` (:func:`choose_score_threshold`) and saved with the model."""
    from ...core.registry import ModelRegistry
    from ..checkpoint import guarded_run, resume_settings
    from ..detection.models import backend_of, build_detector
    from ..detection.train import DetectorTrainSettings, train_detector
    from .naming import check_new_name

    base_card = _base_card(base) if base is not None else None  # before anything else: a clear refusal
    registry = ModelRegistry(user_dir=out_dir) if out_dir else ModelRegistry()
    settings = resume_settings(registry.user_dir, str(name or "").strip(), settings, resume)
    st = DetectorTrainSettings.from_dict(settings)  # InputError naming a bad field, before anything is built
    if "warmup_steps" not in (settings or {}):
        st.warmup_steps = default_warmup(st, len(train))
    name = check_new_name(name, registry)
    classes = [str(c) for c in classes]
    if base_card is not None:
        model, cfg, rebuilt, class_head = _with_classes(base_card.path, classes)
        base_name = base_card.name
    else:
        cfg = _fresh_config(config, classes)
        try:
            model = build_detector(cfg)
        except ValueError as exc:
            raise InputError(f"the fresh detector's config: {exc}") from None
        rebuilt, base_name, class_head = [], None, None
    kind = "YOLO-style detector" if backend_of(cfg["arch"]) == "yolo" else f"Faster R-CNN ({cfg['arch']})"
    fields = {"name": name, "description": f"{kind} trained in napari on {', '.join(classes)}"
                                           + (f", fine-tuned from {base_name}" if base_name else ""),
              "normalization": normalization or {"type": "scale", "factor": 1 / 255},
              "training": {"data": data or {}, "base_model": base_name, "rebuilt_weights": rebuilt[:20],
                           "class_head": class_head, "command": "napari-cnnvision Train widget"}}
    with guarded_run(registry.user_dir, name):
        res = train_detector(model, cfg, list(train), list(val), Path(registry.user_dir) / name, st, progress,
                             fields, resume=resume, base_competes=base_card is not None)
    if res.model_dir:
        chosen = choose_score_threshold(model, list(val), classes)
        try:
            _record_thresholds(Path(res.model_dir), chosen, cfg["nms_thresh"])
        except OSError as exc:  # the model is registered; it keeps its config's threshold
            progress(1.0, f"the chosen score threshold could not be saved ({exc}); the model keeps "
                     f"{cfg['score_thresh']}")
            return res
        res.metrics.setdefault("val", {}).update({"score_thresh": chosen["score"], "f1@score_thresh": chosen["f1"]})
        progress(1.0, f"score threshold {chosen['score']} (best F1 {chosen['f1']:.3f} on val)",
                 score_thresh=chosen["score"])
    return res
