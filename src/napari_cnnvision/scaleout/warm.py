"""Warming a Dask worker up while the cluster starts: the framework imported and the model loaded
in a thread of the worker process, so that the first task does not pay for them after the
cluster's start (they overlap with it, and with the command's own planning and submitting).

* a LocalCluster: the workers get this module as a Dask *preload* (``distributed.worker.preload``)
  and the batch's task and model in the config key :data:`CONFIG_KEY` (the nanny hands its config
  to the worker process), see :func:`config_for`; :func:`dask_setup` starts the thread at once;
* an existing cluster (``--scheduler``): :class:`WarmUp`, a worker plugin registered for the
  batch, starts the same thread on each worker that offers the framework's resource (a worker of
  the other framework is left alone: importing both in one process crashes).

The warm-up runs the model once on a small blank image (which loads and caches it in this
process, as any task would); anything that fails there is left for the first real task to report.
:func:`wait` (called by every task) waits for the thread, so that a model is never loaded twice.
"""
from __future__ import annotations

import threading

CONFIG_KEY = "napari-cnnvision.warm-up"
PLUGIN_NAME = "napari-cnnvision-warm-up"
#: side of the blank image the model runs on once
SIDE = 64

_thread: threading.Thread | None = None
_lock = threading.Lock()
timings: dict = {}


def _blank(card):
    import numpy as np

    channels = int(card.channels or 1)
    shape = (SIDE, SIDE) if channels == 1 else (SIDE, SIDE, channels)
    return np.zeros(shape, np.uint8), "YX" if channels == 1 else "YXC"


def _warm(task: str, payload: dict) -> None:
    import time

    t0 = time.perf_counter()
    try:
        from .. import api
        from ..backends.dispatch import card_from_payload, job_for
        from ..worker.jobs import resolve

        card = card_from_payload(payload)
        job = job_for(card, task=task)
        if api._must_isolate(job):  # the other framework is loaded here: the task will say so
            return
        resolve(job)  # the backend's module and its framework
        timings["import_s"] = time.perf_counter() - t0
        image, axes = _blank(card)
        getattr(api, task)(image, card, axes=axes, isolated=False)
    except Exception as exc:  # noqa: BLE001 - the first real task reports what is wrong
        timings["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        timings["total_s"] = time.perf_counter() - t0


def start(task: str, payload: dict) -> bool:
    """Start the warm-up thread of this process (once); False when one already ran or runs."""
    global _thread
    with _lock:
        if _thread is not None:
            return False
        _thread = threading.Thread(target=_warm, args=(task, payload), name="napari-cnnvision-warm-up", daemon=True)
        _thread.start()
        return True


def wait() -> None:
    """Wait for this process's warm-up thread, if one was started."""
    t = _thread
    if t is not None and t is not threading.current_thread():
        t.join()


def config_for(task: str, payload: dict) -> dict:
    """The dask config that makes a LocalCluster's workers warm up for ``task`` with ``payload``."""
    return {"distributed.worker.preload": [__name__], CONFIG_KEY: {"task": task, "model": payload}}


def dask_setup(worker) -> None:
    """Dask's preload hook (in each worker process, at its start)."""
    import dask

    spec = dask.config.get(CONFIG_KEY, None)
    if spec:
        start(spec["task"], spec["model"])


def _has_resource(worker, framework: str | None) -> bool:
    if not framework:
        return True
    state = getattr(worker, "state", None)
    total = getattr(state, "total_resources", None) or getattr(worker, "total_resources", None) or {}
    return total.get(framework, 0) >= 1


def plugin(task: str, payload: dict, framework: str | None):
    """A worker plugin that warms up each worker offering ``framework``'s resource (None: any)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class WarmUp(WorkerPlugin):
        name = PLUGIN_NAME

        def setup(self, worker):
            if _has_resource(worker, framework):
                start(task, payload)

    return WarmUp()


__all__ = ["CONFIG_KEY", "PLUGIN_NAME", "config_for", "dask_setup", "plugin", "start", "wait"]
