"""Running compute-worker jobs from napari without blocking its event loop."""
from __future__ import annotations

import queue
import threading
import time
import weakref

from ..worker import ComputeError, WorkerPool

_POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DONE = object()
MIN_UPDATE_S = 0.2


def pool_for(viewer) -> WorkerPool:
    """The worker pool shared by this viewer's widgets (one set of processes per viewer)."""
    pool = _POOLS.get(viewer)
    if pool is None:
        pool = _POOLS[viewer] = WorkerPool()
        weakref.finalize(viewer, pool.shutdown)
    return pool


class JobRunner:
    """Starts one job at a time on ``pool`` from a napari ``thread_worker``.

    ``on_progress(event)``, ``on_done(result)``, ``on_error(exc)`` and ``on_finished()``
    run on the GUI thread. ``cancel()`` stops the job at once (the worker is killed and
    restarted on the next job); ``stop()`` asks it to stop at its next check.

    With ``owner`` (the widget's Qt object), closing the widget or napari mid-job cancels
    the job and drops its callbacks, which would otherwise touch deleted Qt widgets.
    """

    def __init__(self, pool: WorkerPool, owner=None):
        self.pool = pool
        self._worker = None
        self._job = None
        self._stop = threading.Event()
        self._alive = True
        if owner is not None:
            owner.destroyed.connect(self._owner_destroyed)

    def _owner_destroyed(self, *_):
        self._alive = False
        if self.running:
            self.cancel()

    def _guard(self, fn):
        def call(*args):
            if self._alive:
                fn(*args)
        return call

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self, job: str, kwargs: dict, on_progress=None, on_done=None, on_error=None, on_finished=None,
              framework: str | None = None):
        from napari.qt.threading import thread_worker

        if self.running:
            raise RuntimeError("a job is already running")
        pool, stop = self.pool, self._stop
        stop.clear()
        self._job = (job, framework)

        @thread_worker(ignore_errors=True)  # errors go to on_error, not re-raised in Qt
        def _run():
            events: queue.Queue = queue.Queue()
            box = {}

            def target():
                try:
                    box["result"] = pool.run(job, kwargs, on_event=events.put, should_cancel=stop.is_set,
                                             framework=framework)
                except BaseException as exc:  # delivered to the GUI thread below
                    box["error"] = exc
                finally:
                    events.put(_DONE)

            threading.Thread(target=target, name=f"cnnvision-{job}", daemon=True).start()
            # At most ~5 updates a second reach the GUI: each progress-bar repaint redraws
            # napari's OpenGL window, which is costly with software rendering.
            last_t, pending = 0.0, None
            while True:
                try:
                    ev = events.get(timeout=MIN_UPDATE_S if pending is not None else None)
                except queue.Empty:
                    ev = None
                if ev is _DONE:
                    break
                if ev is not None:
                    pending = ev
                now = time.monotonic()
                if pending is not None and now - last_t >= MIN_UPDATE_S:
                    yield pending
                    last_t, pending = now, None
            if pending is not None:
                yield pending
            if "error" in box:
                exc = box["error"]
                if isinstance(exc, RuntimeError):  # superqt would drop it silently
                    raise ComputeError(f"{type(exc).__name__}: {exc}") from exc
                raise exc
            return box.get("result")

        w = _run()
        if on_progress is not None:
            w.yielded.connect(self._guard(on_progress))
        if on_done is not None:
            w.returned.connect(self._guard(on_done))
        if on_error is not None:
            w.errored.connect(self._guard(on_error))

        def _finished():
            self._worker = None
            if on_finished is not None and self._alive:
                on_finished()

        w.finished.connect(_finished)
        self._worker = w
        w.start()
        return w

    def stop(self):
        self._stop.set()

    def cancel(self):
        if self._job is not None:
            self.pool.worker_for(*self._job).kill()


def describe_error(exc: BaseException) -> str:
    """A one-line message for the user (the traceback goes to the log, not to their face)."""
    from ..core.progress import Cancelled
    from ..worker import JobError, WorkerCrashed

    if isinstance(exc, Cancelled):
        return "Cancelled."
    if isinstance(exc, WorkerCrashed):
        return f"{exc}. Your layers are unchanged."
    if isinstance(exc, JobError):
        return f"{exc.kind}: {exc}" if exc.kind not in ("InputError", "ModelUnavailable", "CorruptModel",
                                                         "ModelNotFound") else str(exc)
    return f"{type(exc).__name__}: {exc}"
