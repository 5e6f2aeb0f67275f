"""napari-side (or any caller's) handle on the compute worker processes."""
from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
from typing import Callable

from ..core.progress import Cancelled, ProgressEvent
from . import transport
from .jobs import framework_of


class ComputeError(Exception):
    """Base of the worker's errors. Deliberately not a RuntimeError: Qt thread helpers treat
    RuntimeError as "the worker object was deleted" and drop it silently."""


class WorkerCrashed(ComputeError):
    """The worker process died while running a job (it is restarted on the next job)."""


class JobError(ComputeError):
    """A job raised inside the worker; ``kind`` is the exception's type name, ``details`` the traceback."""

    def __init__(self, kind: str, message: str, details: str = ""):
        super().__init__(message)
        self.kind = kind
        self.details = details


_MAIN_LOCK = threading.Lock()


def _start_without_main(proc) -> None:
    """Start a spawned process without re-running the caller's ``__main__`` in it.

    ``spawn`` normally imports the parent's main script in the child; a script without an
    ``if __name__ == "__main__"`` guard that opens napari would then open napari (Qt + OpenGL)
    inside the worker, next to TensorFlow — the very crash the worker exists to avoid.
    The worker's target lives in this package, so the child needs nothing from ``__main__``.
    """
    import sys
    import types

    with _MAIN_LOCK:
        real = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            proc.start()
        finally:
            if real is not None:
                sys.modules["__main__"] = real


class ComputeWorker:
    """One long-lived spawned process running one job at a time.

    ``run`` blocks the calling thread (napari calls it from a ``thread_worker``); any
    other thread may call :meth:`cancel` (stop at the next check: training keeps its
    model) or :meth:`kill` (stop at once: the process is replaced on the next job).
    """

    POLL_S = 0.02

    def __init__(self, framework: str = "none"):
        self.framework = framework
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._stop = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._killed = False

    # -- process management -------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        from . import server

        parent, child = self._ctx.Pipe(duplex=True)
        self._stop = self._ctx.Event()
        self._proc = self._ctx.Process(target=server.main, args=(child, self._stop, self.framework),
                                       name=f"napari-cnnvision-worker-{self.framework}", daemon=True)
        _start_without_main(self._proc)
        child.close()
        self._conn = parent
        self._killed = False

    def shutdown(self, timeout: float = 5.0) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        try:
            conn.send(None)
        except (OSError, EOFError, BrokenPipeError):
            pass
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
        conn.close()

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress check."""
        if self._stop is not None:
            self._stop.set()

    def kill(self) -> None:
        """Stop the running job at once by killing the process."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            self._killed = True
            proc.kill()

    # -- jobs -------------------------------------------------------------------
    def run(self, job: str, kwargs: dict | None = None,
            on_event: Callable[[ProgressEvent], None] | None = None,
            should_cancel: Callable[[], bool] | None = None):
        """Run ``job`` with ``kwargs`` and return its result (arrays copied out of shared memory)."""
        with self._lock:
            self.start()
            try:
                payload, blocks = transport.dumps(kwargs or {})
            except OSError as exc:
                raise ComputeError(f"could not hand the data to the compute worker: not enough shared memory "
                                   f"({exc}); free memory or process a smaller image") from exc
            job_id = next(self._ids)
            try:
                try:
                    self._conn.send(("run", job_id, job, payload))
                except (OSError, BrokenPipeError) as exc:
                    self._discard()
                    raise WorkerCrashed(f"could not reach the compute worker: {exc}") from exc
                return self._wait(job_id, on_event, should_cancel)
            finally:
                transport.release(blocks, unlink=True)

    def _wait(self, job_id, on_event, should_cancel):
        conn, proc = self._conn, self._proc
        cancel_sent = False
        while True:
            if should_cancel is not None and not cancel_sent and should_cancel():
                self.cancel()
                cancel_sent = True
            try:
                ready = conn.poll(self.POLL_S)
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                msg = None
                ready = False
                proc.join(1.0)
            if msg is None:
                if not proc.is_alive():
                    code = proc.exitcode
                    killed = self._killed
                    self._discard()
                    if killed:
                        raise Cancelled("the job was stopped (compute worker restarted)")
                    raise WorkerCrashed(
                        f"the compute worker stopped unexpectedly (exit code {code}); "
                        "a fresh one starts with the next job")
                continue
            kind = msg[0]
            if msg[1] != job_id:
                continue  # stale message of an earlier job
            if kind == "event":
                if on_event is not None:
                    on_event(ProgressEvent(msg[2], msg[3], msg[4]))
            elif kind == "done":
                result, _ = transport.loads(msg[2], copy=True, unlink=True)
                return result
            elif kind == "error":
                _, _, etype, message, details = msg
                if etype == "Cancelled":
                    raise Cancelled(message)
                raise JobError(etype, message, details)

    def _discard(self):
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None


class WorkerPool:
    """One :class:`ComputeWorker` per framework, started on first use."""

    def __init__(self):
        self._workers: dict[str, ComputeWorker] = {}
        self._lock = threading.Lock()

    def worker_for(self, job: str, framework: str | None = None) -> ComputeWorker:
        fw = framework_of(job, framework)
        with self._lock:
            if fw not in self._workers:
                self._workers[fw] = ComputeWorker(fw)
            return self._workers[fw]

    def run(self, job: str, kwargs: dict | None = None, on_event=None, should_cancel=None,
            framework: str | None = None):
        return self.worker_for(job, framework).run(job, kwargs, on_event, should_cancel)

    @property
    def workers(self) -> dict[str, ComputeWorker]:
        return dict(self._workers)

    def kill_all(self) -> None:
        for w in list(self._workers.values()):
            w.kill()

    def shutdown(self) -> None:
        for w in list(self._workers.values()):
            w.shutdown()
        self._workers.clear()
