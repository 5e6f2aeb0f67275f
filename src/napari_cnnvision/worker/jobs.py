"""The jobs the compute worker may run: an allowlist of ``name -> (framework, "module:function")``.

A job function takes its keyword arguments plus ``progress`` (a
:class:`~napari_cnnvision.core.progress.Progress`) and returns a picklable result.
The framework decides which worker process runs it: TensorFlow and PyTorch get a
process each (importing tensorflow and then torchvision in one process segfaults).
"""
from __future__ import annotations

import importlib

JOBS: dict[str, tuple[str, str]] = {
    # built-in jobs: plumbing checks, benchmarks and tests
    "echo": ("none", "napari_cnnvision.worker.builtin_jobs:echo"),
    "sleep": ("none", "napari_cnnvision.worker.builtin_jobs:sleep"),
    "crash": ("none", "napari_cnnvision.worker.builtin_jobs:crash"),
    "fail": ("none", "napari_cnnvision.worker.builtin_jobs:fail"),
    "toy.train": ("none", "napari_cnnvision.worker.builtin_jobs:toy_train"),
    "framework_info": ("any", "napari_cnnvision.worker.builtin_jobs:framework_info"),
    # segmentation
    "stardist.predict": ("tf", "napari_cnnvision.backends.stardist.predict:predict_job"),
    "stardist.train": ("tf", "napari_cnnvision.backends.stardist.train:train_job"),
    "unet.predict": ("torch", "napari_cnnvision.backends.unet.predict:predict_job"),
    "unet.train": ("torch", "napari_cnnvision.backends.unet.train:train_job"),
    "bioimageio.predict": ("torch", "napari_cnnvision.backends.bioimageio.predict:predict_job"),
    "bioimageio.predict_tf": ("tf", "napari_cnnvision.backends.bioimageio.predict:predict_job"),  # Keras weights
    "bioimageio.export_unet": ("torch", "napari_cnnvision.backends.bioimageio.export:export_job"),
    "bioimageio.export_stardist": ("tf", "napari_cnnvision.backends.bioimageio.export:export_job"),
    "yolo.predict": ("torch", "napari_cnnvision.backends.detection.predict:predict_job"),
    "detector.train": ("torch", "napari_cnnvision.backends.training.jobs:detector_train_job"),  # YOLO + Faster R-CNN
    "yolo.train": ("torch", "napari_cnnvision.backends.training.jobs:detector_train_job"),  # former name of detector.train
    "fasterrcnn.predict": ("torch", "napari_cnnvision.backends.detection.predict:predict_job"),
    "localizer.predict": ("torch", "napari_cnnvision.backends.localizer.predict:predict_job"),
    "localizer.train": ("torch", "napari_cnnvision.backends.localizer.job:train_job"),
    "stardist.download": ("tf", "napari_cnnvision.backends.pretrained:download_job"),
    "torchvision.download": ("torch", "napari_cnnvision.backends.pretrained:download_job"),
}


def framework_of(job: str, framework: str | None = None) -> str:
    try:
        fw = JOBS[job][0]
    except KeyError:
        raise KeyError(f"unknown compute job {job!r}") from None
    if fw == "any":
        return framework or "none"
    return fw


def kind_of(job: str) -> str:
    """``"train"`` for training jobs (named ``"<backend>.train"``), ``"predict"`` for all others.

    Each kind gets worker processes of its own, so that inference keeps running beside a
    training and a Cancel of one kills only its own process.
    """
    if job not in JOBS:
        raise KeyError(f"unknown compute job {job!r}")
    return "train" if job.rsplit(".", 1)[-1] == "train" else "predict"


def resolve(job: str):
    """Import and return the function of ``job`` (runs inside the worker)."""
    try:
        target = JOBS[job][1]
    except KeyError:
        raise KeyError(f"unknown compute job {job!r}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)
