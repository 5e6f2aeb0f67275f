"""napari-side (or any caller's) handle on the compute worker processes."""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import threading
from typing import Callable

from ..core.progress import Cancelled, ProgressEvent
from . import transport
from .jobs import framework_of, kind_of


class ComputeError(Exception):
    """Base of the worker's errors. Deliberately not a RuntimeError: Qt thread helpers treat
    RuntimeError as "the worker object was deleted" and drop it silently."""


class WorkerCrashed(ComputeError):
    """The worker process died while running a job (it is restarted on the next job)."""


class JobError(ComputeError):
    """A job raised inside the worker; ``kind`` is the exception's type name, ``kinds`` the names of
    its classes (``type.__mro__``, so that subclasses are recognized), ``details`` the traceback."""

    def __init__(self, kind: str, message: str, details: str = "", kinds: tuple = ()):
        super().__init__(message)
        self.kind = kind
        self.kinds = tuple(kinds) or (kind,)
        self.details = details


_MAIN_LOCK = threading.Lock()

#: how much lower a training worker's CPU priority is than its caller's (``os.nice``): a training
#: fills every core for minutes, and napari's event loop (and window drawing) must still get the
#: CPU at once; when nothing else wants the cores, the training runs as fast as at normal priority.
#: ``NAPARI_CNNVISION_TRAIN_NICE`` overrides it (0: the caller's priority).
TRAIN_NICE = 5


def niceness_of(kind: str) -> int:
    """The ``os.nice`` increment of a worker of ``kind`` ("train" or "predict")."""
    if kind != "train":
        return 0
    try:
        return max(0, int(os.environ.get("NAPARI_CNNVISION_TRAIN_NICE", TRAIN_NICE)))
    except ValueError:
        return TRAIN_NICE


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

    ``run`` blocks the calling thread (napari calls it from a ``thread_worker``). A job is
    stopped by the caller's ``should_cancel`` (cooperative: the job sees
    ``progress.stop_requested`` and may return what it has, e.g. a training its model so far)
    or ``should_kill`` (at once: the process is killed and replaced on the next job). Any
    other thread may also call :meth:`cancel` or :meth:`kill`.

    Whatever ends the wait (the result, an error, a callback that raises, Ctrl-C), no
    shared-memory block of the job stays behind: a wait given up before the job ended kills
    the process and removes the blocks of a result it had already sent.
    """

    POLL_S = 0.02

    def __init__(self, framework: str = "none", kind: str = "predict"):
        self.framework = framework
        self.kind = kind
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._stop = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._killed = False

    @property
    def label(self) -> str:
        """``"tf"`` for the TensorFlow inference worker, ``"tf-train"`` for its training worker."""
        return self.framework if self.kind == "predict" else f"{self.framework}-{self.kind}"

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
        self._proc = self._ctx.Process(target=server.main, args=(child, self._stop, self.framework,
                                                                 niceness_of(self.kind)),
                                       name=f"napari-cnnvision-worker-{self.label}", daemon=True)
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
            conn.send(None)  # the worker removes a result not taken yet, then exits
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
            should_cancel: Callable[[], bool] | None = None,
            should_kill: Callable[[], bool] | None = None):
        """Run ``job`` with ``kwargs`` and return its result (arrays copied out of shared memory).

        A job waits for the one before it on this worker; ``should_kill`` true meanwhile drops
        it (:class:`Cancelled`) without touching the job that runs.
        """
        while not self._lock.acquire(timeout=self.POLL_S):
            if should_kill is not None and should_kill():
                raise Cancelled("cancelled before it started")
        try:
            self.start()
            try:
                payload, blocks = transport.dumps(kwargs or {})
            except OSError as exc:
                raise ComputeError(f"could not hand the data to the compute worker: not enough shared memory "
                                   f"({exc}); free memory or process a smaller image") from exc
            job_id = next(self._ids)
            prefix = transport.new_prefix()  # the names of the result's blocks
            state = {"over": False}
            try:
                self._stop.clear()  # here, not in the worker: a Stop right after the start is kept
                try:
                    self._conn.send(("run", job_id, job, payload, prefix))
                except (OSError, BrokenPipeError) as exc:
                    state["over"] = True
                    self._discard()
                    raise WorkerCrashed(f"could not reach the compute worker: {exc}") from exc
                return self._wait(job_id, on_event, should_cancel, should_kill, state)
            except BaseException:
                if not state["over"]:  # a callback raised, Ctrl-C, ...: the job must not go on
                    self._abandon()
                raise
            finally:
                transport.release(blocks, unlink=True)
                if not self.alive:  # died (killed, crashed) maybe half-way through sending its result
                    transport.unlink_prefixed(prefix)
        finally:
            self._lock.release()

    def _wait(self, job_id, on_event, should_cancel, should_kill, state):
        conn, proc = self._conn, self._proc
        cancel_sent = False
        while True:
            if should_cancel is not None and not cancel_sent and should_cancel():
                self.cancel()
                cancel_sent = True
            if should_kill is not None and not self._killed and should_kill():
                self.kill()
            try:
                ready = conn.poll(self.POLL_S)
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                msg = None
                proc.join(1.0)
            if msg is None:
                if not proc.is_alive():
                    state["over"] = True
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
            if msg[1] != job_id:  # pragma: no cover - an abandoned job's process is killed
                if kind == "done":
                    transport.unlink(msg[3])
                continue
            if kind == "event":
                if on_event is not None:
                    on_event(ProgressEvent(msg[2], msg[3], msg[4]))
            elif kind == "done":
                state["over"] = True
                try:
                    result, _ = transport.loads(msg[2], copy=True, unlink=True)
                finally:
                    transport.unlink(msg[3])  # also when copying fails half-way
                return result
            elif kind == "error":
                state["over"] = True
                _, _, etype, message, details, bases = msg
                if etype == "Cancelled":
                    raise Cancelled(message)
                raise JobError(etype, message, details, bases)

    def _abandon(self):
        """The caller gave up waiting before the job ended: kill the process and remove the
        shared-memory blocks of any result it had sent already."""
        proc = self._proc
        if proc is not None:
            if proc.is_alive():
                self._killed = True
                proc.kill()
            proc.join(5.0)
        self._discard()

    def _discard(self):
        """Forget the (dead) process; results it sent and nobody took are removed."""
        conn = self._conn
        if conn is not None:
            try:
                while conn.poll(0):
                    msg = conn.recv()
                    if msg and msg[0] == "done":
                        transport.unlink(msg[3])
            except (EOFError, OSError):
                pass
            conn.close()
        self._proc = self._conn = None


class WorkerPool:
    """Worker processes started on first use: one per framework and kind of job.

    Inference jobs of a framework share one process (it keeps loaded models); training jobs
    (:func:`~napari_cnnvision.worker.jobs.kind_of`) get their own, so a training neither
    blocks the other widgets' inference nor dies by their Cancel.
    """

    def __init__(self):
        self._workers: dict[tuple[str, str], ComputeWorker] = {}
        self._lock = threading.Lock()

    def worker_for(self, job: str, framework: str | None = None) -> ComputeWorker:
        key = (framework_of(job, framework), kind_of(job))
        with self._lock:
            if key not in self._workers:
                self._workers[key] = ComputeWorker(*key)
            return self._workers[key]

    def run(self, job: str, kwargs: dict | None = None, on_event=None, should_cancel=None,
            framework: str | None = None, should_kill=None):
        return self.worker_for(job, framework).run(job, kwargs, on_event, should_cancel, should_kill)

    @property
    def workers(self) -> dict[str, ComputeWorker]:
        """The workers by :attr:`ComputeWorker.label` (``"tf"``, ``"torch-train"``, ...)."""
        with self._lock:
            return {w.label: w for w in self._workers.values()}

    def shutdown(self) -> None:
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for w in workers:
            w.shutdown()
