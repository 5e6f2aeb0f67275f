"""The Python API: the same backends as the widgets and the CLI, run in this process.

    >>> from napari_cnnvision import api
    >>> res = api.segment(image)              # default (shipped) model
    >>> res.labels, res.table["area"]

Heavy frameworks are imported when a function runs, not when this module is imported.
For use beside a GUI, pass ``isolated=True`` to run in the compute worker process.
"""
from __future__ import annotations

from .core.registry import ModelCard, ModelRegistry
from .core.results import SegmentationResult


def list_models(task: str | None = None, registry: ModelRegistry | None = None) -> list[ModelCard]:
    return (registry or ModelRegistry()).list(task)


def get_model(name_or_path: str, registry: ModelRegistry | None = None) -> ModelCard:
    return (registry or ModelRegistry()).get(name_or_path)


def segment(image, model: str | ModelCard | None = None, *, axes: str | None = None,
            prob_thresh: float | None = None, nms_thresh: float | None = None,
            pmin: float = 1.0, pmax: float = 99.8, n_tiles="auto", return_polygons: bool = False,
            progress=None, registry: ModelRegistry | None = None) -> SegmentationResult:
    """Instance segmentation of ``image`` (see :class:`SegmentationResult`)."""
    from .backends.segment import run_segmentation

    registry = registry or ModelRegistry()
    card = model if isinstance(model, ModelCard) else (
        registry.get(model) if model is not None else registry.default("segment"))
    return run_segmentation(image, card, axes=axes, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                            pmin=pmin, pmax=pmax, n_tiles=n_tiles, return_polygons=return_polygons,
                            progress=progress)
