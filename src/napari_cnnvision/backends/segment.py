"""Dispatch a segmentation request to the backend of the model's card."""
from __future__ import annotations

from ..core.axes import InputError
from ..core.progress import NULL_PROGRESS
from ..core.registry import ModelCard


def job_for(card: ModelCard) -> str:
    if card.backend.startswith("stardist"):
        return "stardist.predict"
    if card.backend == "unet":
        return "unet.predict"
    raise InputError(f"model {card.name!r} ({card.backend}) is not a segmentation model")


def run_segmentation(image, card: ModelCard, progress=None, pool=None, **kwargs):
    """Run in this process (CLI, Python API, inside the worker), or in ``pool`` when given."""
    from ..worker.jobs import resolve

    job = job_for(card)
    if pool is not None:
        return pool.run(job, {"image": image, "model": card_payload(card), **kwargs},
                        on_event=None if progress is None else (lambda ev: progress(ev.fraction, ev.message,
                                                                                    **ev.metrics)),
                        should_cancel=None if progress is None else (lambda: progress.stop_requested))
    return resolve(job)(progress=progress or NULL_PROGRESS, image=image, model=card_payload(card), **kwargs)


def card_payload(card: ModelCard) -> dict:
    """A card as plain data for a job (keeps source and path)."""
    return {**card.to_json(), "source": card.source, "path": card.path}


def thresholds_for(card: ModelCard) -> dict:
    """The model's optimized thresholds read from its folder (no framework import).

    ``prob``: StarDist's object probability / the U-Net's seed threshold; ``nms``: StarDist only.
    """
    if card.backend == "unet":
        from .unet.io import thresholds_of

        return {"prob": thresholds_of(card).get("prob")}
    from .stardist.predict import thresholds_of

    return thresholds_of(card)
