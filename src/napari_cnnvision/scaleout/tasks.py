"""The functions a Dask worker runs for one image, or one window of a block-wise image (imported
there by name, so keep them importable)."""
from __future__ import annotations

TASK_FUNCTIONS = ("segment", "detect", "localize")  # the api functions of the batch commands


class WrongWorker(RuntimeError):
    """A task landed on a worker process that already holds the other deep-learning framework."""


def _card_here(model: dict, task: str):
    """The card of the payload ``model``; :class:`WrongWorker` when this process holds the other framework."""
    from .. import api
    from ..backends.dispatch import card_from_payload, job_for
    from ..worker.jobs import framework_of

    card = card_from_payload(model)
    job = job_for(card, task=task)
    if api._must_isolate(job):  # the other framework (or Qt) is loaded here: running would crash it
        raise WrongWorker(f"this Dask worker process already loaded another framework than {framework_of(job)}; "
                          "start workers per framework (dask worker ... --resources torch=1, or tf=1)")
    return card


def compute_window(path: str, window: tuple, model: dict, norm: tuple | None, kwargs: dict):
    """Window ``(y0, y1, x0, x1)`` of the 2-D image ``path`` (read lazily, :func:`.blockwise.open_source`)
    segmented with ``model`` (a card payload) in this process: ``norm`` ``(lo, scale)`` -- the whole
    image's normalization -- applied first as the single-process block-wise run applies it (None:
    the window as it is). Returns the window's SegmentationResult."""
    import numpy as np

    from .. import api
    from .blockwise import drop_output_caches, open_source
    from .warm import wait

    wait()
    card = _card_here(model, "segment")
    y0, y1, x0, x1 = (int(v) for v in window)
    x = np.asarray(open_source(path)[y0:y1, x0:x1])
    if norm is not None:
        lo, scale = norm
        x = (x.astype(np.float32) - np.float32(lo)) * np.float32(scale)
    try:
        return api.segment(x, card, isolated=False, **kwargs)
    finally:
        drop_output_caches()  # every window is a new image: the threshold caches would only hold memory


def compute(task: str, path: str, model: dict, kwargs: dict):
    """Read ``path`` and run ``task`` (an :mod:`napari_cnnvision.api` function) with the model
    ``model`` (a card payload) in this process; returns the result object."""
    from .. import api
    from ..core.images import read_image
    from .warm import wait

    wait()  # the worker's warm-up (framework import, model load), if it still runs
    if task not in TASK_FUNCTIONS:
        raise ValueError(f"unknown batch task {task!r}")
    card = _card_here(model, task)
    image = read_image(path)
    return getattr(api, task)(image, card, isolated=False, **kwargs)
