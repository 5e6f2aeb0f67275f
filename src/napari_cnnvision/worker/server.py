"""The worker process's main loop (runs in the spawned process)."""
from __future__ import annotations

import os
import signal
import traceback

from ..core.progress import Progress
from . import transport
from .jobs import resolve


def _quiet_frameworks():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", os.environ.get("NAPARI_CNNVISION_CUDA_DEVICES", ""))
    os.environ.setdefault("KMP_WARNINGS", "0")


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the process that started us is gone (napari killed or crashed).

    Without this an orphaned worker could keep computing, holding memory and CPU, until
    its job ends. A daemon thread: it costs one ``getppid`` a second.
    """
    import threading
    import time

    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="cnnvision-parent-watch", daemon=True).start()


def main(conn, stop_event, framework: str) -> None:
    """Serve jobs from ``conn`` until it closes or a ``None`` message arrives.

    Messages in: ``("run", job_id, job_name, payload_bytes)``.
    Messages out: ``("event", job_id, fraction, message, metrics)``,
    ``("done", job_id, result_bytes)``, ``("error", job_id, type_name, message, traceback)``.
    """
    _quiet_frameworks()
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent
    deferred = []  # shared-memory inputs still referenced by caches
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg is None:
            break
        _, job_id, job, payload = msg
        stop_event.clear()

        def emit(ev, job_id=job_id):
            conn.send(("event", job_id, ev.fraction, ev.message, ev.metrics))

        opened = []
        try:
            kwargs, opened = transport.loads(payload, copy=False)
            func = resolve(job)
            result = func(progress=Progress(emit, stop_event.is_set), **kwargs)
            data, blocks = transport.dumps(result)
            conn.send(("done", job_id, data))
            transport.release(blocks)  # the client unlinks them after copying
        except BaseException as exc:  # report everything; the loop survives
            conn.send(("error", job_id, type(exc).__name__, str(exc), traceback.format_exc()))
        finally:
            deferred = transport.release(deferred + opened)
