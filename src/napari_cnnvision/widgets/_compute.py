"""Running compute-worker jobs from napari without blocking its event loop."""
from __future__ import annotations

import logging
import queue
import threading
import time
import weakref

from ..worker import ComputeError, WorkerPool

_POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DONE = object()
MIN_UPDATE_S = 0.2
log = logging.getLogger("napari_cnnvision")


def pool_for(viewer) -> WorkerPool:
    """The worker pool shared by this viewer's widgets (one set of processes per viewer)."""
    pool = _POOLS.get(viewer)
    if pool is None:
        pool = _POOLS[viewer] = WorkerPool()
        weakref.finalize(viewer, pool.shutdown)
    return pool


class _Carried(ComputeError):
    """Carries a RuntimeError out of the thread helper, which would drop it silently."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


class TaskContext:
    """What a task of :meth:`JobRunner.start_task` gets: ``run`` a job in the pool (its progress
    mapped into ``span`` of the task's bar), report ``progress``, ``check`` for Stop / Cancel."""

    def __init__(self, pool: WorkerPool, emit, stop: threading.Event, kill: threading.Event,
                 framework: str | None = None):
        self.pool, self._emit, self._stop, self._kill, self.framework = pool, emit, stop, kill, framework

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set() or self._kill.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once Stop or Cancel was pressed."""
        from ..core.progress import Cancelled

        if self.cancelled:
            raise Cancelled("stopped by the user")

    def progress(self, fraction: float | None, message: str = "") -> None:
        from ..core.progress import ProgressEvent

        self._emit(ProgressEvent(None if fraction is None else float(fraction), message))

    def run(self, job: str, kwargs: dict, span: tuple[float, float] = (0.0, 1.0), prefix: str = ""):
        """``job``'s result; its progress events fill ``span`` (fractions of the task's bar), their
        messages led by ``prefix``."""
        emit = self._emit
        if tuple(span) != (0.0, 1.0) or prefix:
            from ..core.progress import ProgressEvent

            a, b = span

            def emit(ev, _emit=self._emit):
                f = None if ev.fraction is None else a + (b - a) * ev.fraction
                _emit(ProgressEvent(f, f"{prefix}{ev.message}" if prefix else ev.message, ev.metrics))
        return self.pool.run(job, kwargs, on_event=emit, should_cancel=self._stop.is_set, framework=self.framework,
                             should_kill=self._kill.is_set)


class JobRunner:
    """Starts one job at a time on ``pool`` from a napari ``thread_worker``.

    ``on_progress(event)``, ``on_metrics(event)``, ``on_done(result)``, ``on_error(exc)`` and
    ``on_finished()`` run on the GUI thread. ``on_progress`` gets the latest event at most every
    :data:`MIN_UPDATE_S` (plain bar updates in between are dropped); ``on_metrics`` gets every
    event that carries metrics (a training's epochs), each one, in order, before ``on_done``.

    ``stop()`` asks the job to stop at its next check: it sees ``progress.stop_requested`` and
    may end normally with what it has (a training returns its model so far; a prediction raises
    :class:`Cancelled`). ``cancel()`` stops it at once: its worker process is killed (and
    restarted on the next job); workers running other jobs, e.g. a training, are not touched.

    With ``owner`` (the widget's Qt object), closing the widget or napari mid-job cancels
    the job and drops its callbacks, which would otherwise touch deleted Qt widgets.
    """

    def __init__(self, pool: WorkerPool, owner=None):
        self.pool = pool
        self._worker = None
        self._stop = threading.Event()
        self._kill = threading.Event()
        self._gentle = False
        self._alive = True
        if owner is not None:
            owner.destroyed.connect(self._owner_destroyed)

    def _owner_destroyed(self, *_):
        self._alive = False
        if self.running:
            self._kill.set()

    def _guard(self, fn):
        def call(*args):
            if self._alive:
                fn(*args)
        return call

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self, job: str, kwargs: dict, on_progress=None, on_done=None, on_error=None, on_finished=None,
              framework: str | None = None, on_metrics=None):
        """Run one compute-worker ``job`` with ``kwargs``."""
        return self.start_task(lambda ctx: ctx.run(job, kwargs), on_progress, on_done, on_error, on_finished,
                               framework, on_metrics, name=job, gentle=False)

    def start_task(self, task, on_progress=None, on_done=None, on_error=None, on_finished=None,
                   framework: str | None = None, on_metrics=None, name: str = "task", gentle: bool = False):
        """Run ``task(ctx)`` off the GUI thread: a :class:`TaskContext` lets it run jobs in the pool
        one after another (e.g. one per block of a large image), report progress and check for
        Stop / Cancel between them; its return value goes to ``on_done``.

        ``gentle``: the first :meth:`cancel` only stops (the running job is asked to end, no next
        one starts, its worker and loaded model stay); a second one kills the worker at once."""
        from napari.qt.threading import thread_worker

        if self.running:
            raise RuntimeError("a job is already running")
        pool, stop, kill = self.pool, self._stop, self._kill
        stop.clear()
        kill.clear()
        self._gentle = gentle
        keep_metrics = on_metrics is not None

        @thread_worker(ignore_errors=True)  # errors go to on_error, not re-raised in Qt
        def _run():
            events: queue.Queue = queue.Queue()
            box = {}

            def target():
                try:
                    box["result"] = task(TaskContext(pool, events.put, stop, kill, framework))
                except BaseException as exc:  # delivered to the GUI thread below
                    box["error"] = exc
                finally:
                    events.put(_DONE)

            threading.Thread(target=target, name=f"cnnvision-{name}", daemon=True).start()
            # At most ~5 updates a second reach the GUI: each progress-bar repaint redraws
            # napari's OpenGL window, which is costly with software rendering. Events with
            # metrics are collected meanwhile and all delivered with the next update.
            last_t, latest, metrics = 0.0, None, []
            while True:
                try:
                    ev = events.get(timeout=MIN_UPDATE_S if latest is not None else None)
                except queue.Empty:
                    ev = None
                if ev is _DONE:
                    break
                if ev is not None:
                    latest = ev
                    if keep_metrics and ev.metrics:
                        metrics.append(ev)
                now = time.monotonic()
                if latest is not None and now - last_t >= MIN_UPDATE_S:
                    yield latest, metrics
                    last_t, latest, metrics = now, None, []
            if latest is not None:
                yield latest, metrics
            if "error" in box:
                exc = box["error"]
                raise _Carried(exc) if isinstance(exc, RuntimeError) else exc
            return box.get("result")

        def deliver(item):
            latest, metrics = item
            for ev in metrics:
                on_metrics(ev)
            if on_progress is not None:
                on_progress(latest)

        w = _run()
        w.yielded.connect(self._guard(deliver))
        if on_done is not None:
            w.returned.connect(self._guard(on_done))
        if on_error is not None:
            w.errored.connect(self._guard(lambda exc: on_error(exc.original if isinstance(exc, _Carried) else exc)))

        def _finished():
            self._worker = None
            if on_finished is not None and self._alive:
                on_finished()

        w.finished.connect(_finished)
        self._worker = w
        w.start()
        return w

    def stop(self):
        """Ask the job to stop at its next check (a training then returns the model it has)."""
        self._stop.set()

    def cancel(self):
        """Stop the job at once (its worker process is killed); a gentle task is first only stopped
        (:meth:`start_task`)."""
        if getattr(self, "_gentle", False) and not self._stop.is_set():
            self._stop.set()
            return
        self._kill.set()


#: Errors of the user's input or environment: shown as their message alone, wherever raised.
USER_ERRORS = frozenset({"InputError", "ModelNotFound", "CorruptModel", "ModelUnavailable", "AnnotationError"})


def describe_error(exc: BaseException) -> str:
    """A one-line message for the user, the same for an error raised in napari's process and in
    the worker. Unexpected errors name their type; their traceback goes to the log."""
    import traceback

    from ..worker import JobError, WorkerCrashed

    if isinstance(exc, JobError):
        kind, kinds, details = exc.kind, exc.kinds, exc.details
    else:
        kind, kinds = type(exc).__name__, [c.__name__ for c in type(exc).__mro__]
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if "Cancelled" in kinds:
        return "Cancelled."
    if isinstance(exc, WorkerCrashed):
        return f"{exc}. Your layers are unchanged."
    if USER_ERRORS.intersection(kinds) or (isinstance(exc, ComputeError) and not isinstance(exc, JobError)):
        return str(exc)
    log.error("unexpected error in a napari-cnnvision job: %s\n%s", kind, details)
    return f"Unexpected error ({kind}): {exc}; details in the log"
