"""The compute worker: data round trip, progress, errors, cancellation, crashes, frameworks."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import shm_names

from napari_cnnvision.core.progress import Cancelled
from napari_cnnvision.worker import ComputeWorker, JobError, WorkerCrashed


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def _mapped_shm() -> set:
    """Blocks some live process has mapped (in use, by this test or by another program)."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        names.update(m.group(1) for m in re.finditer(r"/dev/shm/(psm_\w+)", text))
    return names


def _no_new_shm(before) -> bool:
    """No block left beside those of ``before``. A leaked block is one no process maps; blocks that
    other programs on this machine are using meanwhile are not counted."""
    return _wait_for(lambda: not (shm_names() - before - _mapped_shm()), timeout=5.0)


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
    assert _no_new_shm(before)  # every shared-memory block was released


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


# -- shared memory is released whatever the client does ------------------------------------------

def test_no_shm_left_when_a_progress_callback_raises(pool):
    """The callback fails after the job has started: its result (large arrays in shared memory)
    is never taken by the client, and must not stay in /dev/shm."""
    before = shm_names()
    img = np.ones((512, 512), np.float32)

    def boom(ev):
        raise ZeroDivisionError("callback bug")

    with pytest.raises(ZeroDivisionError):
        pool.run("echo", {"image": img}, on_event=boom)
    time.sleep(1.0)  # time for a worker that went on to send its result
    assert _no_new_shm(before)
    res = pool.run("echo", {"image": img})  # the pool is usable afterwards
    np.testing.assert_array_equal(res["args"]["image"], img)
    assert _no_new_shm(before)


def test_no_shm_left_after_ctrl_c_during_wait(pool, request):
    """Ctrl-C while the caller waits (the isolated Python API): the job's result must not leak."""
    import _thread

    # interrupt_main does nothing when SIGINT is not Python's default handler (an earlier test or
    # library may have left another one): the real Ctrl-C of an interactive session
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    before = shm_names()
    w = pool.worker_for("sleep")
    w.start()
    fired = []

    def ctrl_c_at_the_first_event(_event):  # mid-job on any machine (a timer fired after the job on a loaded one)
        if not fired:
            fired.append(True)
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        w.run("toy.train", {"epochs": 4, "seconds": 1.0, "weights_size": 1 << 18}, on_event=ctrl_c_at_the_first_event)
    assert fired
    time.sleep(1.5)  # the job would have ended and sent its result by now
    assert _no_new_shm(before)
    assert pool.run("toy.train", {"epochs": 1})["epochs"] == 1
    assert _no_new_shm(before)


def test_no_shm_left_when_the_worker_dies_while_sending_its_result(pool):
    before = shm_names()
    with pytest.raises(WorkerCrashed, match="exit code 5"):
        pool.run("crash", {"code": 5, "while_sending": True})
    assert _no_new_shm(before)


def test_server_leaves_no_shm_when_the_client_is_gone():
    """A result sent to a client that closes its end without reading it is removed by the worker."""
    from napari_cnnvision.worker import transport

    before = shm_names()
    w = ComputeWorker()
    w.start()
    payload, blocks = transport.dumps({"image": np.ones((512, 512), np.float32)})
    try:
        w._conn.send(("run", 1, "echo", payload, transport.new_prefix()))
        assert w._conn.poll(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # skip progress events up to the result
            msg = w._conn.recv()
            if msg[0] == "done":
                break
    finally:
        transport.release(blocks, unlink=True)
    proc = w._proc
    w._conn.close()  # the client goes away without taking the result
    proc.join(10)
    assert not proc.is_alive()
    assert _no_new_shm(before)


# -- the worker may use the GPU ----------------------------------------------------------------

def test_worker_keeps_the_gpus_visible(monkeypatch):
    """Trainings need the GPU: the worker no longer hides it (NAPARI_CNNVISION_CUDA_DEVICES opts out)."""
    from napari_cnnvision.worker import WorkerPool

    monkeypatch.delenv("NAPARI_CNNVISION_CUDA_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = WorkerPool()
    try:
        assert p.run("framework_info", {})["cuda_visible_devices"] is None
    finally:
        p.shutdown()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    p = WorkerPool()
    try:
        assert p.run("framework_info", {})["cuda_visible_devices"] == "0"
    finally:
        p.shutdown()
    monkeypatch.setenv("NAPARI_CNNVISION_CUDA_DEVICES", "")  # opt out: CPU only
    p = WorkerPool()
    try:
        assert p.run("framework_info", {})["cuda_visible_devices"] == ""
    finally:
        p.shutdown()


# -- cooperative Stop keeps the model; kinds of jobs get their own processes -------------------

def test_stop_ends_a_training_early_and_returns_its_model(pool):
    stop = threading.Event()
    events = []

    def on_event(ev):
        events.append(ev)
        if ev.metrics.get("epoch") == 3:
            stop.set()

    res = pool.run("toy.train", {"epochs": 200, "seconds": 20.0}, on_event=on_event, should_cancel=stop.is_set)
    assert res["stopped"] and 3 <= res["epochs"] < 200
    assert (res["weights"] == res["epochs"]).all()  # the model of the epochs done
    assert [e.metrics["epoch"] for e in events if e.metrics] == list(range(1, res["epochs"] + 1))


def test_stop_asked_at_once_is_not_lost(pool):
    """Stop pressed right after Start (before the worker picked the job up) still stops it."""
    res = pool.run("toy.train", {"epochs": 100, "seconds": 10.0}, should_cancel=lambda: True)
    assert res["stopped"] and res["epochs"] == 1


def test_training_and_inference_get_separate_workers(pool):
    assert pool.worker_for("toy.train") is not pool.worker_for("sleep")
    assert pool.worker_for("stardist.train") is not pool.worker_for("stardist.predict")
    assert pool.worker_for("stardist.predict") is pool.worker_for("stardist.download")
    box = {}
    t = threading.Thread(target=lambda: box.update(res=pool.run("toy.train", {"epochs": 20, "seconds": 4.0})))
    t.start()
    assert _wait_for(lambda: pool.worker_for("toy.train").alive)
    t0 = time.monotonic()
    assert pool.run("sleep", {"seconds": 0.1, "steps": 1})["steps"] == 1  # not queued behind the training
    assert time.monotonic() - t0 < 3.0
    assert t.is_alive()
    t.join(30)
    assert box["res"]["epochs"] == 20
    assert pool.workers["none-train"] is pool.worker_for("toy.train")
    assert pool.workers["none"] is pool.worker_for("sleep")


def test_cancel_of_a_queued_job_spares_the_running_one(pool):
    """Two widgets' inference shares a worker: Cancel of the job waiting for it drops that job only."""
    box = {}
    t = threading.Thread(target=lambda: box.update(res=pool.run("sleep", {"seconds": 2.0, "steps": 20})))
    t.start()
    assert _wait_for(lambda: pool.worker_for("sleep").alive)
    pid = pool.worker_for("sleep").pid
    kill = threading.Event()
    threading.Timer(0.3, kill.set).start()
    with pytest.raises(Cancelled, match="before it started"):
        pool.run("echo", {}, should_kill=kill.is_set)
    t.join(30)
    assert box["res"]["pid"] == pid and pool.worker_for("sleep").pid == pid


def test_training_workers_run_at_a_lower_cpu_priority(pool, monkeypatch):
    """A training fills the cores for minutes; napari's process must still get the CPU first."""
    from napari_cnnvision.worker.client import TRAIN_NICE, niceness_of

    own = os.getpriority(os.PRIO_PROCESS, 0)
    res = pool.run("toy.train", {"epochs": 1, "seconds": 0.1})
    assert os.getpriority(os.PRIO_PROCESS, res["pid"]) == min(19, own + TRAIN_NICE)  # (19: the lowest)
    pid = pool.run("sleep", {"seconds": 0.0, "steps": 1})["pid"]
    assert os.getpriority(os.PRIO_PROCESS, pid) == own  # inference: the caller's priority
    monkeypatch.setenv("NAPARI_CNNVISION_TRAIN_NICE", "0")
    assert niceness_of("train") == 0 and niceness_of("predict") == 0
    monkeypatch.setenv("NAPARI_CNNVISION_TRAIN_NICE", "not a number")
    assert niceness_of("train") == TRAIN_NICE
