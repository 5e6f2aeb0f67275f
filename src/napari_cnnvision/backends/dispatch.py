"""Which compute job runs a model: dispatch by the card's (task, backend).

A new backend plugs in by adding its jobs to :data:`worker.jobs.JOBS` and one line to
:data:`BACKEND_JOBS` (plus, when it has tunable thresholds, one to :data:`THRESHOLDS`);
the widgets, the CLI and the Python API then find it through :func:`job_for` and
:func:`run_model`. No framework is imported here.
"""
from __future__ import annotations

import importlib

from ..core.axes import InputError
from ..core.progress import NULL_PROGRESS
from ..core.registry import ModelCard

#: (task, backend) -> {action: job name}; actions are "predict" and "train". An entry
#: ``"<action>@<framework>"`` is the job for a card whose ``extra["framework"]`` names that framework
#: (a bioimage.io package with Keras weights only runs in the TensorFlow worker).
BACKEND_JOBS: dict[tuple[str, str], dict[str, str]] = {
    ("segment", "stardist2d"): {"predict": "stardist.predict", "train": "stardist.train"},
    ("segment", "stardist3d"): {"predict": "stardist.predict", "train": "stardist.train"},
    ("segment", "unet"): {"predict": "unet.predict", "train": "unet.train"},
    ("segment", "bioimageio"): {"predict": "bioimageio.predict", "predict@tf": "bioimageio.predict_tf"},
    ("detect", "yolo"): {"predict": "yolo.predict", "train": "detector.train"},
    ("detect", "fasterrcnn"): {"predict": "fasterrcnn.predict", "train": "detector.train"},
    ("localize", "localizer"): {"predict": "localizer.predict", "train": "localizer.train"},
}

#: backend -> "module:function" returning the model's optimized thresholds without loading it.
THRESHOLDS: dict[str, str] = {
    "stardist2d": "napari_cnnvision.backends.stardist.predict:thresholds_of",
    "stardist3d": "napari_cnnvision.backends.stardist.predict:thresholds_of",
    "unet": "napari_cnnvision.backends.unet.io:thresholds_of",
    "bioimageio": "napari_cnnvision.backends.bioimageio.predict:thresholds_of",
    "yolo": "napari_cnnvision.backends.detection.thresholds:thresholds_of",
    "fasterrcnn": "napari_cnnvision.backends.detection.thresholds:thresholds_of",
}


def job_for(card: ModelCard, action: str = "predict", task: str | None = None) -> str:
    """The job that runs ``action`` for ``card``; ``task`` (optional) is what the caller wants
    the model for, and a model of another task is refused with a clear message."""
    if task is not None and card.task != task:
        raise InputError(f"model {card.name!r} is a {card.task} model, not a {task} model")
    jobs = BACKEND_JOBS.get((card.task, card.backend))
    if jobs is None:
        raise InputError(f"model {card.name!r}: no {card.task} backend {card.backend!r} in this version "
                         "of napari-cnnvision")
    if action not in jobs:
        raise InputError(f"model {card.name!r} ({card.backend}) cannot {action}")
    return jobs.get(f"{action}@{card.extra.get('framework')}", jobs[action])


def card_payload(card: ModelCard) -> dict:
    """A card as plain data for a job (keeps source and path)."""
    return {**card.to_json(), "source": card.source, "path": card.path}


def card_from_payload(model) -> ModelCard:
    """The inverse of :func:`card_payload` (a card passes through unchanged)."""
    if isinstance(model, ModelCard):
        return model
    return ModelCard.from_dict(model, model.get("source", "path"), model.get("path"))


def run_model(image, card: ModelCard, progress=None, pool=None, action: str = "predict",
              task: str | None = None, **kwargs):
    """Run ``card``'s job in this process (CLI, Python API, inside the worker), or in ``pool``."""
    from ..worker.jobs import resolve

    job = job_for(card, action, task)
    if pool is not None:
        return pool.run(job, {"image": image, "model": card_payload(card), **kwargs},
                        on_event=None if progress is None else (lambda ev: progress(ev.fraction, ev.message,
                                                                                    **ev.metrics)),
                        should_cancel=None if progress is None else (lambda: progress.stop_requested))
    return resolve(job)(progress=progress or NULL_PROGRESS, image=image, model=card_payload(card), **kwargs)


def thresholds_for(card: ModelCard) -> dict:
    """The model's optimized thresholds read from its folder (no framework import); ``{}`` when
    its backend has none. ``prob``: object probability / seed threshold, ``nms``: overlap.

    A corrupt model folder raises :class:`~napari_cnnvision.core.registry.CorruptModel`."""
    target = THRESHOLDS.get(card.backend)
    if target is None:
        return {}
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(card)
