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


def run_segmentation(image, card: ModelCard, progress=None, **kwargs):
    """Run in this process (CLI, Python API, inside the worker)."""
    from ..worker.jobs import resolve

    return resolve(job_for(card))(progress=progress or NULL_PROGRESS, image=image, model=card_payload(card),
                                  **kwargs)


def card_payload(card: ModelCard) -> dict:
    """A card as plain data for a job (keeps source and path)."""
    return {**card.to_json(), "source": card.source, "path": card.path}
