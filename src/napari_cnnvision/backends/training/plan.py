"""What a training run needs, from plain arrays: the one place where the Train widget, the
``train`` command and :func:`napari_cnnvision.api.train` turn image/annotation pairs, a base model
and the user's choices into the compute worker's job request.

:func:`segment_plan`, :func:`detect_plan` and :func:`localize_plan` take several
:class:`TrainPair` s at once, an optional base :class:`~napari_cnnvision.core.registry.ModelCard`
(``None``: a fresh network) and :class:`TrainOptions`; they return a :class:`TrainPlan`
``(job, kwargs, summary, stop_after)``. The training sets come from :mod:`.segmentation`,
:mod:`.detection` and :mod:`.localization` (partial annotation: only the valid regions count);
several pairs are one stack there (:mod:`.pairs`). The validation data is an automatic split of
the pairs (``TrainOptions.val_fraction``) or, with ``val_pairs``, pairs of its own (every training
pair then trains); the summary says which, and its size. :func:`.folders.folder_pairs` reads pairs
from folders (``--images DIR --masks DIR`` or ``--annotations FILE_OR_DIR``).

numpy only (no Qt, napari or framework); the trainers' settings classes are read for their
field names (modules that import no framework).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import numpy as np

from ...core.axes import InputError
from .epochs import MANY_EPOCHS
from .pairs import (TrainPair, check_pairs, check_val_pairs, one_or_stack, pad_stack, rgb_frames, stack_box_pairs,
                    stack_label_pairs, val_box_samples, val_frames_set, val_label_set)

__all__ = ["TrainPair", "TrainOptions", "TrainPlan", "plan", "segment_plan", "detect_plan", "localize_plan",
           "upsampling_choices"]

TASKS = ("segment", "detect", "localize")
#: task -> the job that trains a fresh network
FRESH_JOB = {"segment": "unet.train", "detect": "yolo.train", "localize": "localizer.train"}
#: task -> (learning rate of a fresh network, when fine-tuning)
AUTO_LR = {"segment": (1e-3, 3e-4), "detect": (2e-3, 6e-4), "localize": (2e-3, 6e-4)}
#: job -> "module:class" of its settings (modules without a framework import)
SETTINGS_CLASS = {
    "unet.train": "napari_cnnvision.backends.unet.train:UNetTrainSettings",
    "stardist.train": "napari_cnnvision.backends.stardist.train:StarDistTrainSettings",
    "yolo.train": "napari_cnnvision.backends.detection.train:DetectorTrainSettings",
    "detector.train": "napari_cnnvision.backends.detection.train:DetectorTrainSettings",
    "localizer.train": "napari_cnnvision.backends.localizer.settings:LocalizerTrainSettings",
}
#: jobs that continue an interrupted run (``resume=True``; checkpoints in ``<user dir>/.training/<name>``)
RESUMABLE = ("unet.train", "stardist.train", "yolo.train", "detector.train", "localizer.train")
#: the zoom of the "scale" augmentation (per axis, up to 1 + this either way)
SCALE_ZOOM = 0.2


class TrainPlan(NamedTuple):
    """A training request: the worker ``job``, its ``kwargs``, a one-line ``summary`` of the split,
    and ``stop_after``: seconds after which the caller asks the job to stop (a time budget for a
    trainer whose settings have no ``time_budget`` of their own; ``None`` otherwise)."""

    job: str
    kwargs: dict
    summary: str
    stop_after: float | None = None


@dataclass
class TrainOptions:
    """The user's choices; ``None`` means a default derived from the annotation (or the trainer's).

    ``epochs`` or ``minutes`` (a time budget: training ends when it is over, the best model
    kept); ``learning_rate`` ``None``: :data:`AUTO_LR`; augmentation ``flips`` (mirror flips),
    ``turns`` (90° turns), ``intensity`` (gain/offset jitter), ``scale`` (random zoom);
    ``upsampling`` for a fresh U-Net (one of :func:`upsampling_choices`); ``extra``: further
    trainer settings merged last (network size, steps; a bad or unknown one is the trainer's
    InputError naming it); ``config``: a fresh detector's architecture."""

    epochs: int | None = None
    minutes: float | None = None
    learning_rate: float | None = None
    val_fraction: float = 0.2
    batch_size: int | None = None
    patch_size: int | None = None
    flips: bool = True
    turns: bool = True
    intensity: bool = True
    scale: bool = False
    upsampling: str | None = None
    resume: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)
    config: dict | None = None
    command: str = "napari-cnnvision Train widget"
    source: str = "napari layers"

    def check(self) -> None:
        if self.epochs is not None and self.minutes is not None:
            raise InputError("give either a number of epochs or a time budget in minutes, not both")
        if self.epochs is not None and (not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1):
            raise InputError(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        if self.minutes is not None and not (isinstance(self.minutes, (int, float)) and self.minutes > 0):
            raise InputError(f"minutes must be a number > 0, got {self.minutes!r}")
        if self.learning_rate is not None and not 0 < float(self.learning_rate) < 1:
            raise InputError(f"the learning rate must lie between 0 and 1, got {self.learning_rate}")
        if not 0 < float(self.val_fraction) < 1:
            raise InputError(f"the validation fraction must lie between 0 and 1, got {self.val_fraction}")


# -- choices --------------------------------------------------------------------------------------
def upsampling_choices() -> tuple[str, ...]:
    """A fresh U-Net's upsampling choices (:data:`..unet.options.UPSAMPLING`; no PyTorch import)."""
    from ..unet.options import UPSAMPLING

    return tuple(UPSAMPLING)


def train_job_of(task: str, base) -> str:
    """The worker job that trains ``base`` (a ModelCard) for ``task``; ``None``: a fresh network."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if base is None:
        return FRESH_JOB[task]
    from ..dispatch import job_for

    job = job_for(base, "train", task)
    if not base.path:
        raise InputError(f"model {base.name!r} is not downloaded yet; use it once (or `napari-cnnvision models`) "
                         "before fine-tuning it")
    return job


def settings_fields(job: str) -> set[str]:
    """The field names of ``job``'s settings class (empty when unknown)."""
    target = SETTINGS_CLASS.get(job)
    if target is None:
        return set()
    module, cls = target.split(":")
    try:
        return {f.name for f in fields(getattr(importlib.import_module(module), cls))}
    except (ImportError, AttributeError):  # pragma: no cover - a trainer being rewritten
        return set()


def augment_dict(opts: TrainOptions, job: str) -> dict:
    """The augmentation choices as the trainer's ``augment`` settings."""
    if job == "localizer.train":  # its own batched augmentation (LocalizerAugment)
        return {"on": bool(opts.flips or opts.turns or opts.intensity or opts.scale), "turns": bool(opts.turns),
                **({} if opts.scale else {"zoom": 0.0, "shift": 0.0}), **({} if opts.intensity else {"intensity": 0.0})}
    from ..augment import AugmentSettings

    names = {f.name for f in fields(AugmentSettings)}
    d = {"flips": bool(opts.flips or (opts.turns and "turns" not in names)), "zoom": SCALE_ZOOM if opts.scale else 0.0}
    if "turns" in names:
        d["turns"] = bool(opts.turns)
    if not opts.intensity:
        d.update(gain=(1.0, 1.0), offset=0.0)
    return d


def _settings(task: str, job: str, opts: TrainOptions, defaults: dict, fine_tune: bool) -> tuple[dict, float | None]:
    """The trainer's settings dict and the caller's stop time (or None)."""
    if opts.resume and job not in RESUMABLE:
        raise InputError(f"{job.split('.')[0]} training cannot resume an interrupted run; start a new one")
    known = settings_fields(job)
    s = {k: v for k, v in defaults.items() if k in known}
    s["learning_rate"] = float(opts.learning_rate) if opts.learning_rate is not None else AUTO_LR[task][int(fine_tune)]
    if opts.epochs is not None:
        s["epochs"] = int(opts.epochs)
    if opts.batch_size is not None:
        s["batch_size"] = int(opts.batch_size)
    if opts.patch_size is not None and "patch_size" in known and job not in ("yolo.train", "detector.train", "localizer.train"):
        s["patch_size"] = int(opts.patch_size)
    s["augment"] = augment_dict(opts, job)
    if opts.upsampling is not None:
        if fine_tune or job != "unet.train":
            raise InputError("the upsampling is chosen for a fresh U-Net only (a base model keeps its own)")
        if opts.upsampling not in upsampling_choices():
            raise InputError(f"upsampling must be one of {', '.join(upsampling_choices())}, got {opts.upsampling!r}")
        s["upsampling"] = opts.upsampling
    stop_after = None
    if opts.minutes is not None:
        s["epochs"] = MANY_EPOCHS
        if "time_budget" in known:
            s["time_budget"] = float(opts.minutes) * 60
        else:
            stop_after = float(opts.minutes) * 60
    if opts.seed and "seed" in known:
        s["seed"] = int(opts.seed)
    s.update({k: v for k, v in opts.extra.items() if k != "config"})
    check_settings(job, s)
    return s, stop_after


def check_settings(job: str, settings: dict) -> None:
    """The trainer's own validation of ``settings`` (an InputError naming a bad or unknown field),
    here, before any data is sent to the worker."""
    target = SETTINGS_CLASS.get(job)
    if target is None:
        return
    module, cls = target.split(":")
    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):  # pragma: no cover - a trainer being rewritten
        return
    klass.from_dict(dict(settings))


def _names(pairs: list[TrainPair]) -> str:
    names = [p.name or f"image {np.asarray(p.image).shape}" for p in pairs]
    return "; ".join(names[:5]) + (f"; ... ({len(names)} pairs)" if len(names) > 5 else "")


def _describe(pairs: list[TrainPair], opts: TrainOptions) -> str:
    return f"{opts.source}: {_names(pairs)}"


def _val_source(val_pairs, opts: TrainOptions) -> str:
    """Where the validation data came from, for the summary."""
    if val_pairs is None:
        return f"validation: an automatic {100 * float(opts.val_fraction):.0f}% split of the training data"
    n = len(val_pairs)
    return f"validation: {n} pair{'s' if n > 1 else ''} of its own ({_names(val_pairs)})"


# -- segmentation ---------------------------------------------------------------------------------
def segment_plan(pairs, base=None, options: TrainOptions | None = None, name: str = "",
                 out_dir=None, val_pairs=None) -> TrainPlan:
    """The training request of a segmentation model (fresh U-Net, or fine-tuning ``base``:
    a U-Net or a StarDist model); ``val_pairs``: the validation data (``None``: a split of ``pairs``)."""
    from .segmentation import segmentation_set

    opts = options or TrainOptions()
    opts.check()
    job = train_job_of("segment", base)
    pairs, val_pairs = check_pairs(pairs), check_val_pairs(val_pairs)
    image, labels, valid = stack_label_pairs(pairs)
    ts = segmentation_set(one_or_stack(image), one_or_stack(labels), valid=one_or_stack(valid),
                          val_fraction=None if val_pairs else float(opts.val_fraction), seed=int(opts.seed))
    if val_pairs:
        vs = val_label_set(val_pairs, image)
        ts = replace(ts, val_images=vs.images, val_masks=vs.masks, val_regions=vs.train_regions)
    defaults = dict(ts.defaults)
    if job == "stardist.train":  # the shipped nuclei-he-stardist recipe's steps: 10 x 20 steps at patch 80 lost AP
        defaults.update(steps_per_epoch=50, epochs=max(int(defaults.get("epochs", 15)), 15),
                        patch_size=max(int(defaults.get("patch_size", 128)), 128))
    settings, stop_after = _settings("segment", job, opts, defaults, base is not None)
    summary = f"{ts.summary()}; {_val_source(val_pairs, opts)}"
    data = f"{_describe(pairs, opts)} ({ts.n_objects} objects); {summary}"
    kwargs = {"images": ts.images, "masks": ts.masks, "val_images": ts.val_images, "val_masks": ts.val_masks,
              "settings": settings, "init_folder": _init_of(job, base), "data": data,
              "command": opts.command, "name": name}
    if out_dir is not None:
        kwargs["out_dir"] = str(out_dir)
    if opts.resume:
        kwargs["resume"] = True
    return TrainPlan(job, kwargs, summary, stop_after)


def _init_of(job: str, base):
    """What the trainer starts from: StarDist takes the card payload (a pretrained base has no
    folder until its library downloads it), the U-Net the base's folder."""
    if base is None:
        return None
    if job == "stardist.train":
        from ..dispatch import card_payload

        return card_payload(base)
    return base.path


# -- detection / localization -----------------------------------------------------------------------
def detect_plan(pairs, base=None, options: TrainOptions | None = None, name: str = "", out_dir=None,
                val_pairs=None) -> TrainPlan:
    """The training request of a detector (fresh YOLO-style network, or fine-tuning ``base``;
    its class head is rebuilt for the pairs' class set); ``val_pairs`` as in :func:`segment_plan`."""
    from ..dispatch import card_payload
    from .detection import detection_set

    opts = options or TrainOptions()
    opts.check()
    job = train_job_of("detect", base)
    pairs, val_pairs = check_pairs(pairs), check_val_pairs(val_pairs)
    frames, boxes, classes, fr, regions = stack_box_pairs(pairs, "detection")
    stack = pad_stack(rgb_frames(frames))
    dset = detection_set(stack, boxes, classes, frames=fr, valid_regions=regions,
                         val_fraction=None if val_pairs else float(opts.val_fraction), seed=int(opts.seed))
    if val_pairs:
        dset = replace(dset, val=val_box_samples(val_pairs, dset.classes, dset.normalization))
    settings, stop_after = _settings("detect", job, opts, dset.defaults, base is not None)
    summary = f"{dset.summary()}; {_val_source(val_pairs, opts)}"
    data = {"source": _describe(pairs, opts), "n_images": len(frames), "n_boxes": int(len(boxes)),
            "summary": summary, "dropped_at_split": dset.dropped, "command": opts.command}
    if len(pairs) == 1 and pairs[0].name:
        data["pair"] = pairs[0].name
    kwargs = {"train": dset.train, "val": dset.val, "classes": dset.classes, "settings": settings,
              "base": card_payload(base) if base is not None else None,
              "config": opts.config if opts.config is not None else opts.extra.get("config"),
              "normalization": dset.normalization, "data": data, "name": name}
    if out_dir is not None:
        kwargs["out_dir"] = str(out_dir)
    if opts.resume:
        kwargs["resume"] = True
    return TrainPlan(job, kwargs, summary, stop_after)


def localize_plan(pairs, base=None, options: TrainOptions | None = None, name: str = "",
                  out_dir=None, val_pairs=None) -> TrainPlan:
    """The training request of a localizer (one box and class per image / frame): a fresh network,
    or fine-tuning ``base`` (a localizer; its class head rebuilt for the user's classes);
    ``val_pairs`` as in :func:`segment_plan`."""
    from ..dispatch import card_payload
    from .localization import localization_set

    opts = options or TrainOptions()
    opts.check()
    job = train_job_of("localize", base)  # a model of another task is refused by name
    pairs, val_pairs = check_pairs(pairs), check_val_pairs(val_pairs)
    frames, boxes, classes, fr, _ = stack_box_pairs(pairs, "localization")
    if len({f.shape for f in frames}) > 1:
        raise InputError("localization images must all have one size (got "
                         f"{', '.join(str(s) for s in sorted({f.shape for f in frames})[:4])})")
    ls = localization_set(np.stack(frames), boxes, classes, fr, val_fraction=None if val_pairs else
                          float(opts.val_fraction), seed=int(opts.seed))
    if val_pairs:
        vs, ids = val_frames_set(val_pairs, ls.classes, frames[0].shape)
        ls = replace(ls, val_images=vs.images, val_boxes=vs.boxes, val_labels=ids, val_frames=vs.train_frames)
    settings, stop_after = _settings("localize", job, opts, ls.defaults, base is not None)
    summary = f"{ls.summary()}; {_val_source(val_pairs, opts)}"
    data = f"{_describe(pairs, opts)} ({len(boxes)} frames annotated); {summary}"
    kwargs = {"images": ls.images, "boxes": ls.boxes, "labels": ls.labels, "class_names": ls.classes,
              "val_images": ls.val_images, "val_boxes": ls.val_boxes, "val_labels": ls.val_labels,
              "settings": settings, "data": data, "name": name}
    if base is not None:
        kwargs["base"] = card_payload(base)
    if out_dir is not None:
        kwargs["out_dir"] = str(out_dir)
    if opts.resume:
        kwargs["resume"] = True
    return TrainPlan(job, kwargs, summary, stop_after)


PLANS = {"segment": segment_plan, "detect": detect_plan, "localize": localize_plan}


def plan(task: str, pairs, base=None, options: TrainOptions | None = None, name: str = "",
         out_dir=None, val_pairs=None) -> TrainPlan:
    """:func:`segment_plan`, :func:`detect_plan` or :func:`localize_plan` by ``task``."""
    if task not in PLANS:
        raise InputError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    return PLANS[task](pairs, base, options, name=name, out_dir=out_dir, val_pairs=val_pairs)
