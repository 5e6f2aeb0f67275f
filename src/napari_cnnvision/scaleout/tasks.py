"""The function a Dask worker runs for one image (imported there by name, so keep it importable)."""
from __future__ import annotations

TASK_FUNCTIONS = ("segment", "detect", "localize")  # the api functions of the batch commands


class WrongWorker(RuntimeError):
    """A task landed on a worker process that already holds the other deep-learning framework."""


def compute(task: str, path: str, model: dict, kwargs: dict):
    """Read ``path`` and run ``task`` (an :mod:`napari_cnnvision.api` function) with the model
    ``model`` (a card payload) in this process; returns the result object."""
    from .. import api
    from ..backends.dispatch import card_from_payload, job_for
    from ..core.images import read_image
    from ..worker.jobs import framework_of

    if task not in TASK_FUNCTIONS:
        raise ValueError(f"unknown batch task {task!r}")
    card = card_from_payload(model)
    job = job_for(card, task=task)
    if api._must_isolate(job):  # the other framework (or Qt) is loaded here: running would crash it
        raise WrongWorker(f"this Dask worker process already loaded another framework than {framework_of(job)}; "
                          "start workers per framework (dask worker ... --resources torch=1, or tf=1)")
    image = read_image(path)
    return getattr(api, task)(image, card, isolated=False, **kwargs)
