"""The Python API: the same backends as the widgets and the CLI, run in this process.

    >>> from napari_cnnvision import api
    >>> res = api.segment(image)              # default (shipped) model
    >>> res.labels, res.table["area"]

Heavy frameworks are imported when a function runs, not when this module is imported.
Pass ``isolated=True`` to run in a compute worker process instead. The API does so by
itself when Qt (e.g. napari) or the other deep-learning framework is already loaded here:
TensorFlow and torchvision crash when imported into one process, and both crash beside
Qt's OpenGL stack.
"""
from __future__ import annotations

import sys

from .core.registry import ModelCard, ModelRegistry
from .core.results import SegmentationResult

_FRAMEWORK_MODULES = {"tf": ("tensorflow",), "torch": ("torch", "torchvision")}
_pool = None


def _worker_pool():
    global _pool
    if _pool is None:
        import atexit

        from .worker import WorkerPool

        _pool = WorkerPool()
        atexit.register(_pool.shutdown)
    return _pool


_QT_MODULES = ("PyQt5", "PyQt6", "PySide2", "PySide6")


def _must_isolate(job: str) -> bool:
    """True when the job's framework would crash here: the other framework or Qt (napari's
    OpenGL stack) is already loaded in this process."""
    from .worker.jobs import framework_of

    fw = framework_of(job)
    if fw not in _FRAMEWORK_MODULES:
        return False
    others = [m for f, mods in _FRAMEWORK_MODULES.items() if f != fw for m in mods]
    return any(m in sys.modules for m in others + list(_QT_MODULES))


def list_models(task: str | None = None, registry: ModelRegistry | None = None) -> list[ModelCard]:
    return (registry or ModelRegistry()).list(task)


def get_model(name_or_path: str, registry: ModelRegistry | None = None) -> ModelCard:
    return (registry or ModelRegistry()).get(name_or_path)


def segment(image, model: str | ModelCard | None = None, *, axes: str | None = None,
            prob_thresh: float | None = None, nms_thresh: float | None = None,
            pmin: float | None = None, pmax: float | None = None, n_tiles="auto", return_polygons: bool = False,
            tta: bool = False, progress=None, registry: ModelRegistry | None = None,
            isolated: bool | None = None, stitch_z: bool = False) -> SegmentationResult:
    """Instance segmentation of ``image`` (see :class:`SegmentationResult`).

    ``axes``: the axis order ("YX", "YXC", "TYX", "ZYX", "TZYX", ...); guessed when ``None``
    (a 3-D array is then a time-lapse "TYX" for a 2D model). A 2D model given a Z stack
    (``axes="ZYX"``) segments it slice by slice; ``stitch_z=True`` links overlapping objects
    of neighbouring slices into 3D objects. ``pmin``/``pmax``: normalization percentiles;
    ``None`` uses the model card's normalization (``result.normalization`` says what was used).
    ``tta``: test-time augmentation -- the network runs on the image's 8 flips / 90° turns and
    the outputs are averaged before post-processing; about 8x slower, a little more accurate.
    """
    from .backends.dispatch import job_for, run_model

    registry = registry or ModelRegistry()
    card = model if isinstance(model, ModelCard) else (
        registry.get(model) if model is not None else registry.default("segment"))
    if isolated is None:
        isolated = _must_isolate(job_for(card, task="segment"))
    return run_model(image, card, task="segment", axes=axes, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
                     pmin=pmin, pmax=pmax, n_tiles=n_tiles, return_polygons=return_polygons, tta=tta,
                     stitch_z=stitch_z, progress=progress, pool=_worker_pool() if isolated else None)


def localize(image, model: str | ModelCard | None = None, *, axes: str | None = None, frames=None,
             regions=None, pmin: float | None = None, pmax: float | None = None, tta: bool = False,
             progress=None, registry: ModelRegistry | None = None, isolated: bool | None = None):
    """The one object of ``image`` -- or of each frame of a stack, or of each region -- and its
    class: a :class:`~napari_cnnvision.core.results.LocalizationResult` with one box per processed
    frame / region (``boxes`` ``(y0, x0, y1, x1)`` in pixels, ``classes``, ``scores`` and all
    class ``probabilities``).

    ``model``: name, folder or card (default: the shipped localizer). ``axes``: "YX", "YXC",
    "TYX", "TYXC" (guessed when ``None``) or "ZYX[C]". ``frames``: frame indices to process.
    ``regions``: ``(y0, x0, y1, x1)`` rectangles (each optionally led by a frame index), one box
    each, in image coordinates. ``pmin``/``pmax``: normalization percentiles (``None``: the card's).
    ``tta``: average over the image's 4 mirror flips (4x the network time).
    """
    from .backends.dispatch import job_for, run_model

    registry = registry or ModelRegistry()
    card = model if isinstance(model, ModelCard) else (
        registry.get(model) if model is not None else registry.default("localize"))
    if isolated is None:
        isolated = _must_isolate(job_for(card, task="localize"))
    return run_model(image, card, task="localize", axes=axes, frames=frames, regions=regions, pmin=pmin, pmax=pmax,
                     tta=tta, progress=progress, pool=_worker_pool() if isolated else None)


def detect(image, model: str | ModelCard | None = None, *, axes: str | None = None,
           score_thresh: float | None = None, nms_thresh: float | None = None, frames=None,
           tile_size=None, tile_overlap=None, progress=None, registry: ModelRegistry | None = None,
           isolated: bool | None = None):
    """Objects in ``image`` with their class and score: a
    :class:`~napari_cnnvision.core.results.DetectionResult` (``boxes`` ``(y0, x0, y1, x1)`` in
    pixels, ``classes``, ``scores``, ``frame`` for stacks; ``counts()`` per class).

    ``model``: name, folder or card (default: the shipped detector). Grayscale, RGB and RGBA,
    8/16-bit and float images of any size; images larger than the model's input size are tiled
    (``tile_size=0`` turns that off). ``axes``: "YX", "YXC", "TYX", "TYXC", "ZYX" or "ZYXC"
    (guessed when ``None``); stacks run frame by frame (``frames`` picks some). Thresholds
    default to the model's.
    """
    from .backends.dispatch import job_for, run_model

    registry = registry or ModelRegistry()
    card = model if isinstance(model, ModelCard) else (
        registry.get(model) if model is not None else registry.default("detect"))
    if isolated is None:
        isolated = _must_isolate(job_for(card, task="detect"))
    return run_model(image, card, task="detect", axes=axes, score_thresh=score_thresh, nms_thresh=nms_thresh,
                     frames=frames, tile_size=tile_size, tile_overlap=tile_overlap, progress=progress,
                     pool=_worker_pool() if isolated else None)


def read_annotations(src, images=None, masks: bool = True):
    """Annotations from a COCO JSON file, a VOC XML file or folder, a YOLO folder, a boxes CSV or a
    folder of label TIFFs beside images: an ``AnnotationSet`` (per image: boxes ``(y0, x0, y1, x1)``
    in pixels, class names, optional scores and masks). ``images``: where the images are, when the
    format needs their sizes."""
    from .core.formats.annotations import read_annotations as _read

    return _read(src, images=images, masks=masks)


def write_annotations(annotations, fmt: str, out_dir, mask_format: str = "rle"):
    """Write an ``AnnotationSet`` as ``fmt`` ("coco", "yolo", "voc", "csv" or "masks") into
    ``out_dir`` (atomically, file by file); returns the paths written."""
    from .core.formats.annotations import write_annotations as _write

    return _write(annotations, fmt, out_dir, mask_format=mask_format)


def export_dataset(items, out_dir, fmt: str, **kwargs):
    """A training-ready dataset folder (images + annotations in ``fmt``, optional train/val split,
    class list, MANIFEST.txt) from ``ExportItem``s (see :mod:`napari_cnnvision.core.formats.export`)."""
    from .core.formats.export import export_dataset as _export

    return _export(items, out_dir, fmt, **kwargs)
