"""The compute worker: data round trip, progress, errors, cancellation, crashes, frameworks."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import shm_names

from napari_cnnvision.core.progress import Cancelled
from napari_cnnvision.worker import ComputeWorker, JobError, WorkerCrashed


def test_roundtrip_2048_uint16(pool):
    before = shm_names()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65535, size=(2048, 2048), dtype=np.uint16)
    res = pool.run("echo", {"image": img, "note": "hi"})
    out = res["args"]["image"]
    assert out.dtype == np.uint16 and out.shape == (2048, 2048)
    np.testing.assert_array_equal(out, img)
    assert res["sums"]["image"] == float(img.sum(dtype=np.float64))
    assert res["args"]["note"] == "hi"
    assert res["pid"] != os.getpid()
    assert shm_names() <= before  # every shared-memory block was released


def test_progress_events_stream(pool):
    events = []
    res = pool.run("sleep", {"seconds": 0.2, "steps": 4}, on_event=events.append)
    assert res["steps"] == 4
    assert [round(e.fraction, 2) for e in events] == [0.25, 0.5, 0.75, 1.0]
    assert events[-1].message == "step 4/4"


def test_job_error_keeps_worker(pool):
    with pytest.raises(JobError) as ei:
        pool.run("fail", {"message": "bad input"})
    assert ei.value.kind == "ValueError" and "bad input" in str(ei.value)
    pid = pool.worker_for("fail").pid
    assert pool.run("echo", {"x": 1})["pid"] == pid  # same process serves the next job


def test_unknown_job_is_rejected(pool):
    with pytest.raises(KeyError, match="unknown compute job"):
        pool.run("os.system", {"command": "true"})


def test_cooperative_stop(pool):
    w = pool.worker_for("sleep")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Cancelled):
        w.run("sleep", {"seconds": 30, "steps": 300}, should_cancel=stop.is_set)
    assert w.alive  # a stop keeps the process (and its loaded models)


def test_kill_mid_job_then_next_job_runs(pool):
    w = pool.worker_for("sleep")
    w.start()
    first_pid = w.pid
    threading.Timer(0.5, lambda: os.kill(first_pid, signal.SIGKILL)).start()
    t = time.perf_counter()
    with pytest.raises(WorkerCrashed, match="stopped unexpectedly"):
        w.run("sleep", {"seconds": 30, "steps": 300})
    assert time.perf_counter() - t < 5
    res = w.run("echo", {"a": np.arange(5)})
    assert res["pid"] != first_pid
    np.testing.assert_array_equal(res["args"]["a"], np.arange(5))


def test_crash_inside_job(pool):
    with pytest.raises(WorkerCrashed, match="exit code 3"):
        pool.run("crash", {"code": 3})
    assert pool.run("echo", {})["pid"] > 0


def test_frameworks_get_separate_processes(pool):
    """Importing tensorflow then torchvision in one process segfaults: each gets its own worker."""
    tf = pool.run("framework_info", {"load": ("tf",)}, framework="tf")
    torch = pool.run("framework_info", {"load": ("torch",)}, framework="torch")
    assert tf["pid"] != torch["pid"] != os.getpid()
    assert tf["versions"]["tensorflow"].startswith("2.")
    assert torch["versions"]["torch"].startswith("2.") and "torchvision" in torch["versions"]
    assert "torch" not in tf["loaded"] and "tensorflow" not in torch["loaded"]
    # both stay usable afterwards
    assert pool.run("framework_info", {}, framework="tf")["pid"] == tf["pid"]


def test_shutdown_and_restart():
    w = ComputeWorker()
    assert w.run("echo", {})["pid"] > 0
    w.shutdown()
    assert not w.alive
    assert w.run("echo", {})["pid"] > 0
    w.shutdown()


def test_worker_does_not_rerun_an_unguarded_main_script(tmp_path):
    """A user's script without a __main__ guard must not run again inside the worker."""
    script = tmp_path / "user_script.py"
    script.write_text(
        "import sys\n"
        "print('MAIN-RAN', flush=True)\n"
        "from napari_cnnvision.worker import WorkerPool\n"
        "p = WorkerPool()\n"
        "print('pid', p.run('echo', {})['pid'], flush=True)\n"
        "p.shutdown()\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("MAIN-RAN") == 1
    assert "pid" in out.stdout


ORPHAN_SCRIPT = r"""
import sys, threading, time
from napari_cnnvision.worker import WorkerPool

if __name__ == "__main__":
    pool = WorkerPool()
    threading.Thread(target=pool.run, args=("sleep", {"seconds": 60, "steps": 1}), daemon=True).start()
    time.sleep(1.0)
    print(pool.worker_for("sleep").pid, flush=True)
    time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()  # a zombie waiting for init to reap it has exited
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_exits_when_its_parent_is_killed(tmp_path):
    """napari killed mid-job (SIGKILL): its worker must not compute on as an orphan (the job sends
    nothing for 60 s, so only the parent watch can notice)."""
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert not _gone(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(pid), "the worker outlived its parent"
    finally:
        proc.kill()
