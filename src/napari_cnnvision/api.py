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


def train(task: str, images, annotations=None, base: str | ModelCard | None = None, *, name: str,
          epochs: int | None = None, minutes: float | None = None, val_fraction: float = 0.2,
          learning_rate: float | None = None, batch_size: int | None = None, patch_size: int | None = None,
          flips: bool = True, turns: bool = True, intensity: bool = True, scale: bool = False,
          upsampling: str | None = None, format: str | None = None, resume: bool = False, partial: bool = False,
          settings: dict | None = None, progress=None, registry: ModelRegistry | None = None,
          val_images=None, val_annotations=None, val_format: str | None = None):
    """Train (or fine-tune) a ``task`` model ("segment", "detect" or "localize") on your annotations
    and register it as ``name`` in the user model folder; returns a
    :class:`~napari_cnnvision.backends.training.outcome.TrainResult` (``.card`` the new model's card,
    usable by name in :func:`segment` / :func:`detect` / :func:`localize` at once; ``.metrics`` the
    final validation metrics). The same backend as the Train widget and ``napari-cnnvision train``.

    ``images``: a folder of images with ``annotations`` a folder of label TIFFs of the same names
    (segmentation; boxes of class "object" for detection) or an annotation file / folder (COCO, VOC,
    YOLO, boxes CSV; ``format`` checks which); or an array (a list of arrays) with ``annotations``
    its label image(s) (segmentation) or ``ImageAnnotations`` / ``{"boxes", "classes"[, "frames"]}``
    (detection, localization); or a list of ``TrainPair`` (``annotations`` None). The annotation
    counts as complete (whole images are training / validation units); ``partial=True`` (arrays):
    only the bounding box of what is annotated in each image counts, as in the Train widget.
    ``val_images`` with ``val_annotations`` (the same forms; ``val_format`` as ``format``, default
    recognized from the files): the validation data, instead of holding out ``val_fraction`` of
    the training data (every training image then trains).
    ``base``: the model to fine-tune (name, folder or card; ``None``: a fresh network). ``epochs``
    or ``minutes`` (a time budget; the best model so far is kept when it is over); ``settings``:
    further trainer settings (network size, steps). ``resume``: continue the interrupted run of
    ``name``. The training runs in a compute worker process; ``progress`` gets its events, and its
    stop request ends the run after the current epoch (the best model is kept).
    A name that exists already is refused, never overwritten.
    """
    import time

    from .backends.training.naming import check_new_name
    from .backends.training.outcome import job_outcome
    from .backends.training.plan import TrainOptions, plan
    from .core.axes import InputError

    registry = registry or ModelRegistry()
    name = check_new_name(name, registry)
    card = base if isinstance(base, ModelCard) or base is None else registry.get(base)
    pairs = _train_pairs(task, images, annotations, format, partial)
    val_pairs = None
    if val_images is not None or val_annotations is not None:
        try:
            if val_images is None:
                raise InputError("val_annotations without val_images: give the validation images too")
            val_pairs = _train_pairs(task, val_images, val_annotations, val_format, partial)
        except InputError as e:
            raise InputError(f"validation data: {e}") from None
    opts = TrainOptions(epochs=epochs, minutes=minutes, learning_rate=learning_rate, val_fraction=val_fraction,
                        batch_size=batch_size, patch_size=patch_size, flips=flips, turns=turns, intensity=intensity,
                        scale=scale, upsampling=upsampling, resume=resume, extra=dict(settings or {}),
                        command="napari_cnnvision.api.train", source="folders" if _is_path(images) else "arrays")
    p = plan(task, pairs, card, opts, name=name, out_dir=registry.user_dir, val_pairs=val_pairs)
    t0 = time.monotonic()

    def stop_now() -> bool:
        if progress is not None and progress.stop_requested:
            return True
        return p.stop_after is not None and time.monotonic() - t0 >= p.stop_after

    def on_event(ev):
        if progress is None:
            return
        frac = ev.fraction
        if p.stop_after:
            frac = min(1.0, max(frac or 0.0, (time.monotonic() - t0) / p.stop_after))
        progress(frac, ev.message, **ev.metrics)

    from .worker import JobError

    try:
        result = _worker_pool().run(p.job, p.kwargs, on_event=on_event, should_cancel=stop_now)
    except JobError as exc:  # the trainer's own checks (settings, data, a resumed run): the message as it is
        if {"InputError", "ModelNotFound", "CorruptModel"} & set(exc.kinds):
            raise InputError(str(exc)) from exc
        raise
    return job_outcome(result, name, task, card=ModelRegistry(user_dir=registry.user_dir).get(name))


def export_model(name_or_card: str | ModelCard, to_dir, *, test_image=None, overwrite: bool = False,
                 progress=None, registry: ModelRegistry | None = None):
    """Export our U-Net or 2-D StarDist model ``name_or_card`` (name, folder or card) as a
    bioimage.io package into the new folder ``to_dir``; returns its path. The same backend as
    ``napari-cnnvision models export`` and the Models widget's Export button: weights, RDF,
    pre-processing, test tensors from ``test_image`` (default: the bundled nuclei sample) and
    the card's training data and metrics; the package is written only once ``bioimageio.spec``
    validates it and its own test tensors pass. It runs in the model's compute worker (PyTorch
    for a U-Net, TensorFlow for StarDist), never here. An existing ``to_dir`` is refused unless
    ``overwrite``; a model that cannot be exported (a detector, a pretrained entry) is a clear
    :class:`~napari_cnnvision.core.registry.CorruptModel`.
    """
    from pathlib import Path

    from .backends.bioimageio.export import export_job_name
    from .backends.dispatch import card_payload
    from .core.registry import CorruptModel
    from .worker import JobError

    registry = registry or ModelRegistry()
    card = name_or_card if isinstance(name_or_card, ModelCard) else registry.get(name_or_card)
    job = export_job_name(card)
    dest = Path(to_dir).expanduser()
    if dest.exists() and not overwrite:
        raise CorruptModel(f"{dest} exists already; choose a new folder or pass overwrite=True")
    kwargs = {"model": card_payload(card), "dest": str(dest), "overwrite": overwrite}
    if test_image is not None:
        import numpy as np

        kwargs["test_image"] = np.asarray(test_image)
    try:
        out = _worker_pool().run(job, kwargs, on_event=None if progress is None else (
            lambda ev: progress(ev.fraction, ev.message, **ev.metrics)),
            should_cancel=None if progress is None else (lambda: progress.stop_requested))
    except JobError as exc:  # the exporter's own checks (validation, test tensors, bad input): the message as it is
        from .core.axes import InputError
        from .core.registry import ModelNotFound

        for cls in (CorruptModel, ModelNotFound, InputError):
            if cls.__name__ in exc.kinds:
                raise cls(str(exc)) from exc
        raise
    return Path(out)


def _is_path(x) -> bool:
    from pathlib import Path

    return isinstance(x, (str, Path))


def _train_pairs(task, images, annotations, fmt, partial=False):
    """:func:`train`'s inputs as a list of ``TrainPair``."""
    import numpy as np

    from .backends.training.folders import annotation_pairs, folder_pairs
    from .backends.training.plan import TrainPair
    from .core.axes import InputError

    if _is_path(images):
        from pathlib import Path

        if annotations is None:
            raise InputError("give the annotations: a folder of label TIFFs or an annotation file / folder")
        a = Path(annotations)
        if fmt == "masks" or (fmt is None and a.is_dir() and any(p.suffix.lower() in (".tif", ".tiff")
                                                                  for p in a.iterdir())):
            return folder_pairs(task, images, masks=a)
        return annotation_pairs(task, images, a, fmt)
    if isinstance(images, (list, tuple)) and images and all(isinstance(x, TrainPair) for x in images):
        return list(images)
    many = isinstance(images, (list, tuple))
    ims = list(images) if many else [images]
    anns = list(annotations) if many and isinstance(annotations, (list, tuple)) else [annotations]
    if len(ims) != len(anns):
        raise InputError(f"{len(ims)} images but {len(anns)} annotations")
    pairs = []
    for i, (im, an) in enumerate(zip(ims, anns)):
        if an is None:
            raise InputError(f"image {i + 1} has no annotation")
        if task == "segment":
            pairs.append(TrainPair(np.asarray(im), labels=np.asarray(an), valid=None if partial else "all",
                                   name=f"array {i + 1}"))
            continue
        get = (lambda k, a=an: a.get(k)) if isinstance(an, dict) else (lambda k, a=an: getattr(a, k, None))
        boxes = get("boxes")
        pairs.append(TrainPair(np.asarray(im), boxes=None if boxes is None else np.asarray(boxes, np.float64),
                               classes=get("classes"),
                               frames=get("frames") if isinstance(an, dict) else get("frame"),
                               valid=None if partial else "all", name=f"array {i + 1}"))
    return pairs
