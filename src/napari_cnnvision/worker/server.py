"""The worker process's main loop (runs in the spawned process)."""
from __future__ import annotations

import os
import signal
import traceback

from ..core.progress import Progress
from . import transport
from .jobs import resolve


def _prepare_environment():
    """Quiet the frameworks; let them use the GPUs the caller sees.

    ``NAPARI_CNNVISION_CUDA_DEVICES``, when set, becomes the worker's ``CUDA_VISIBLE_DEVICES``
    (``""``: CPU only; ``"1"``: only the second GPU). TensorFlow would take all GPU memory at
    start; it grows as needed instead, so that the PyTorch worker can share the GPU.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KMP_WARNINGS", "0")
    devices = os.environ.get("NAPARI_CNNVISION_CUDA_DEVICES")
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the process that started us is gone (napari killed or crashed).

    Without this an orphaned worker could keep computing, holding memory and CPU, until
    its job ends. A daemon thread: it costs one ``getppid`` a second. The parent's pid comes
    from multiprocessing, not from ``getppid`` here: a parent killed while this process was
    still starting would otherwise go unnoticed.
    """
    import multiprocessing
    import threading
    import time

    parent = multiprocessing.parent_process()
    parent = parent.pid if parent is not None else os.getppid()
    if os.getppid() != parent:
        os._exit(0)

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="cnnvision-parent-watch", daemon=True).start()


def _run(job: str, payload: bytes, prefix: str, stop_requested, emit, opened: list):
    """Run one job; returns the pickled result and the names of its shared-memory blocks."""
    kwargs, blocks_in = transport.loads(payload, copy=False)
    opened.extend(blocks_in)
    result = resolve(job)(progress=Progress(emit, stop_requested), **kwargs)
    data, blocks = transport.dumps(result, prefix)
    names = [b.name for b in blocks]
    transport.release(blocks)  # closed here; the client unlinks them once copied
    return data, names


def main(conn, stop_event, framework: str, nice: int = 0) -> None:
    """Serve jobs from ``conn`` until it closes or a ``None`` message arrives.

    Messages in: ``("run", job_id, job_name, payload_bytes, result_prefix)``; the result's
    blocks are named ``result_prefix + "0"``, ... (the client removes them by that name if
    this process dies before it could say which it made).
    Messages out: ``("event", job_id, fraction, message, metrics)``,
    ``("done", job_id, result_bytes, shm_names)``,
    ``("error", job_id, type_name, message, traceback, base_names)``.

    The client sends a message only once it has taken (or given up on) the last result, so
    each message, and the end of the connection, tells the worker to remove whatever blocks of
    that result are still there. ``stop_event`` is set by the client (and cleared by it before
    each job): jobs see it as ``progress.stop_requested``. ``nice``: lower this process's CPU
    priority by that much (a training worker: :data:`.client.TRAIN_NICE`).
    """
    _prepare_environment()
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: the normal priority
            pass
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent
    deferred = []  # shared-memory inputs still referenced by caches
    sent: list[str] = []  # blocks of the last result, until the client has taken it
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            transport.unlink(sent)
            sent = []
            if msg is None:
                break
            _, job_id, job, payload, prefix = msg

            def emit(ev, job_id=job_id):
                conn.send(("event", job_id, ev.fraction, ev.message, ev.metrics))

            opened = []
            try:
                data, sent = _run(job, payload, prefix, stop_event.is_set, emit, opened)
                reply = ("done", job_id, data, sent)
            except BaseException as exc:  # report everything; the loop survives
                bases = [c.__name__ for c in type(exc).__mro__]
                reply = ("error", job_id, type(exc).__name__, str(exc), traceback.format_exc(), bases)
            finally:
                deferred = transport.release(deferred + opened)
            try:
                conn.send(reply)
            except (OSError, EOFError):  # the client is gone
                break
    finally:
        transport.unlink(sent)
