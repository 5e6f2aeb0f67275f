"""The localizer's training job in the compute worker: images of any size with one box and
class each -> a model folder in the user's models (the registry lists it at once), fresh or
fine-tuned from a base localizer (:mod:`.finetune`), resumable (:mod:`..checkpoint`)."""
from __future__ import annotations

from pathlib import Path

from .train import LocalizerTrainSettings, prepare_set, train_localizer


def train_job(progress, images, boxes, labels, class_names, val_images=None, val_boxes=None, val_labels=None,
              out_dir=None, name: str = "localizer", settings: dict | None = None, normalization: dict | None = None,
              data: str | None = None, resume: bool = False, base: dict | None = None):
    """Worker entry: train on images of any size with one pixel box ``(y0, x0, y1, x1)`` and class
    id each, keep the epoch best on the val images (the last without), and save the model folder
    ``out_dir/name`` (default: the per-user models folder, where the registry finds it).
    ``base``: a localizer's card payload to fine-tune (its network, input size and normalization;
    the class head rebuilt for ``class_names``, :mod:`.finetune`; the base competes as epoch 0),
    or None: a fresh network.
    ``settings``: a plain dict of :class:`LocalizerTrainSettings` fields (former names too).
    The run's checkpoints go to ``out_dir/.training/name`` (:mod:`..checkpoint`), removed once the
    model is saved; ``resume`` continues the interrupted run ``name`` (with its settings when
    ``settings`` is None)."""
    from ..checkpoint import guarded_run, remove_run, resume_settings, run_dir
    from .io import DEFAULT_NORMALIZATION, save_model

    if out_dir is None:
        from ...core.registry import ModelRegistry

        out_dir = ModelRegistry().user_dir
    if not resume:  # never overwrite a model silently (the widget and CLI check first; this holds for any caller)
        from ...core.registry import ModelRegistry
        from ..training.naming import check_new_name

        name = check_new_name(name, ModelRegistry(user_dir=out_dir))
    start, base_name = None, None
    settings = resume_settings(out_dir, name, settings, resume)
    s = LocalizerTrainSettings.from_dict(settings)  # InputError naming a bad field, before a base is loaded
    if base is not None:
        from ...core.axes import InputError
        from ..dispatch import card_from_payload
        from .finetune import start_from, with_base_architecture

        card = card_from_payload(base)
        if card.task != "localize" or card.backend != "localizer" or not card.path:
            raise InputError(f"model {card.name!r} is not a localizer (a {card.task} model, {card.backend}); "
                             "choose a localizer or a fresh network as the base")
        start = start_from(card.path, list(class_names), seed=int((settings or {}).get("seed", 0)))
        settings, normalization, base_name = with_base_architecture(settings, start.config), start.normalization, card.name
        s = LocalizerTrainSettings.from_dict(settings)  # the base's network and input size
    norm = dict(normalization or DEFAULT_NORMALIZATION)
    train = prepare_set(list(images), boxes, labels, s.input_size, norm)
    val = (prepare_set(list(val_images), val_boxes, val_labels, s.input_size, norm)
           if val_images is not None and len(val_images) else None)
    folder = Path(out_dir) / name
    run = run_dir(out_dir, name)
    with guarded_run(out_dir, name):
        res = train_localizer(train, val, list(class_names), s, out_dir=run, progress=progress, resume=resume,
                              init_state=start.state if start else None, base_competes=start is not None)
        m = res.metrics
        metrics = {f"val_{k}": v for k, v in m.items() if k not in ("loss", "loss_class", "loss_box")}
        origin = ({"base_model": base_name, "class_head": start.class_head, "kept_base": res.kept_base}
                  if start else {"from_scratch": "trained from random weights"})
        save_model(folder, res.model, res.config, list(class_names), name=name, normalization=norm,
                   description=(f"single-object localizer fine-tuned from {base_name} on {', '.join(class_names)}"
                                if start else ""),
                   training={"data": data or f"{len(train)} training images, {len(val) if val else 0} val images",
                             "training_seconds": round(res.seconds, 1), "epochs_run": res.epochs_run,
                             "best_epoch": res.best_epoch, "box_weight_lambda": s.box_weight,
                             **origin, "settings": res.settings, **res.checkpoint},
                   metrics=metrics)
    remove_run(run)  # registered: the run's checkpoints are no longer needed
    return {"model_dir": str(folder), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
            "seconds": res.seconds, "metrics": m, "stopped": res.stopped, "kept_base": res.kept_base}


__all__ = ["train_job"]
