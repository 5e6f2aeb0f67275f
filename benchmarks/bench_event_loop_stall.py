"""Responsiveness of napari's event loop while the compute worker runs a job.

Opens a napari viewer (under Xvfb when there is no display), docks a progress bar and
starts the built-in "sleep" job (``--seconds``, one progress event every 0.1 s by default)
through :class:`napari_cnnvision.widgets._compute.JobRunner` on ``pool_for(viewer)``,
exactly as the plugin's widgets do; each progress event updates the bar. Meanwhile a
``QTimer`` ticks every 10 ms on the GUI thread and the gaps between ticks are recorded:
the longest gap is the longest time the GUI could not react. The worker process is not
started beforehand, so its start-up is part of the measured job, as for a user's first job.

Two references come first: the idle viewer (``--baseline-seconds``, default 5; a loaded
machine stalls an idle event loop too) and a control that updates the same progress bar at
the same rate from a timer with no job and no worker (``--control-seconds``, default 5). The
control separates the cost of repainting the window (under Xvfb napari's OpenGL canvas is
drawn by Mesa's software renderer, and a QOpenGLWidget makes Qt compose the whole window
through OpenGL on every repaint) from the cost of the worker plumbing. The job's gaps are
also split into "until the first progress event" (worker start-up) and the steady part.

    .venv/bin/python benchmarks/bench_event_loop_stall.py [--seconds 30] [--baseline-seconds 5] [--control-seconds 5]
        [--warm-worker]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import ensure_display, machine_note, median, quantile  # noqa: E402
# (napari and Qt are imported in main(): the spawned worker re-imports this module.)

GOAL_MS = 100.0


def gap_stats(ticks):
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    if not gaps:
        return None
    i = max(range(len(gaps)), key=gaps.__getitem__)
    return {"n": len(gaps), "median": median(gaps), "p99": quantile(gaps, 0.99), "max": gaps[i],
            "max_at": ticks[i] - ticks[0], "over50": sum(g > 0.05 for g in gaps),
            "over100": sum(g > 0.1 for g in gaps)}


def show(label, st):
    print(f"{label}: {st['n']} gaps, median {st['median'] * 1e3:.1f} ms, p99 {st['p99'] * 1e3:.1f} ms, "
          f"max {st['max'] * 1e3:.1f} ms (at {st['max_at']:.2f} s), gaps > 50 ms: {st['over50']}, "
          f"> 100 ms: {st['over100']}")


def gl_renderer(viewer) -> str:
    try:
        from vispy.gloo import gl

        viewer.window._qt_viewer.canvas._scene_canvas.set_current()
        return f"{gl.glGetParameter(gl.GL_RENDERER)} ({gl.glGetParameter(gl.GL_VERSION)})"
    except Exception as exc:  # private napari API; informative only
        return f"unknown ({type(exc).__name__})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the sleep job (default 30)")
    ap.add_argument("--steps", type=int, default=None, help="progress events of the job (default: 10 per second)")
    ap.add_argument("--baseline-seconds", type=float, default=5.0, help="idle measurement first (default 5)")
    ap.add_argument("--control-seconds", type=float, default=5.0,
                    help="then the same progress-bar updates driven by a timer, no job (default 5; 0 skips)")
    ap.add_argument("--warm-worker", action="store_true",
                    help="start the worker (a tiny echo job) before measuring, so its start-up is excluded")
    ap.add_argument("--interval-ms", type=int, default=10, help="probe timer interval (default 10)")
    args = ap.parse_args(argv)
    steps = args.steps or max(1, round(args.seconds * 10))

    ensure_display()
    warnings.filterwarnings("ignore", message="System theme detection")
    import napari
    import numpy as np
    from qtpy.QtCore import QEventLoop, Qt, QTimer
    from qtpy.QtWidgets import QApplication, QProgressBar

    from napari_cnnvision.widgets._compute import JobRunner, pool_for

    print("== napari event loop while the compute worker runs a job ==")
    print(f"machine: {machine_note()}")
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).integers(0, 4000, (512, 512), dtype=np.uint16), name="image")
    bar = QProgressBar()
    bar.setRange(0, 1000)
    viewer.window.add_dock_widget(bar, name="benchmark progress", area="bottom")
    app = QApplication.instance()
    t_end = time.time() + 60
    while not (viewer.window._qt_window.windowHandle() and viewer.window._qt_window.windowHandle().isExposed()):
        app.processEvents()
        if time.time() > t_end:
            print("the napari window was never exposed")
            return 1
        time.sleep(0.005)
    for _ in range(50):  # let the first paints settle
        app.processEvents()
        time.sleep(0.01)

    def measure(arm):
        """Tick every interval until ``arm(loop)`` makes the loop quit; returns the tick times."""
        ticks = []
        loop = QEventLoop()
        timer = QTimer()
        timer.setTimerType(Qt.PreciseTimer)
        timer.setInterval(args.interval_ms)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        ticks.append(time.perf_counter())
        timer.start()
        arm(loop)
        loop.exec_()
        timer.stop()
        return ticks

    # 1. baseline: the idle viewer
    base = measure(lambda loop: QTimer.singleShot(int(args.baseline_seconds * 1000), loop.quit))
    base_st = gap_stats(base)

    # 2. control: the same bar updates at the same rate, no job and no worker
    updates = {"n": 0}

    def fake_progress():
        updates["n"] += 1
        bar.setValue(updates["n"] * 1000 // steps % 1001)
        bar.setFormat(f"step {updates['n']}/{steps}")

    control_st = None
    if args.control_seconds > 0:
        feeder = QTimer()
        feeder.setInterval(max(1, round(args.seconds / steps * 1000)))
        feeder.timeout.connect(fake_progress)

        def arm_control(loop):
            feeder.start()
            QTimer.singleShot(int(args.control_seconds * 1000), loop.quit)
        control_st = gap_stats(measure(arm_control))
        feeder.stop()
        bar.reset()

    # 3. the job
    pool = pool_for(viewer)
    runner = JobRunner(pool)
    if args.warm_worker:
        pool.run("echo", {"x": 1})
    state = {"events": [], "error": None, "result": None, "timed_out": False}

    def on_progress(ev):
        state["events"].append(time.perf_counter())
        if ev.fraction is not None:
            bar.setValue(round(ev.fraction * 1000))
        bar.setFormat(ev.message or "%p%")

    def arm(loop):
        state["t0"] = time.perf_counter()
        runner.start("sleep", {"seconds": args.seconds, "steps": steps}, on_progress=on_progress,
                     on_done=lambda r: state.__setitem__("result", r),
                     on_error=lambda e: state.__setitem__("error", e),
                     on_finished=loop.quit)

        def too_long():
            state["timed_out"] = True
            runner.cancel()
            loop.quit()
        QTimer.singleShot(int((args.seconds + 120) * 1000), too_long)

    job = measure(arm)
    wall = job[-1] - state["t0"]
    job_st = gap_stats(job)
    ev = state["events"]
    # split: worker start-up (until the first progress event reaches the GUI) vs steady state
    first = ev[0] if ev else job[-1]
    startup_st = gap_stats([t for t in job if t <= first])
    steady_st = gap_stats([t for t in job if t >= first])
    pool.shutdown()

    ev_gaps = [b - a for a, b in zip(ev, ev[1:])]
    print(f"probe: QTimer every {args.interval_ms} ms on the GUI thread; a gap is the time between two ticks")
    print(f"OpenGL renderer: {gl_renderer(viewer)}; window {viewer.window._qt_window.width()}x"
          f"{viewer.window._qt_window.height()}")
    show(f"baseline, idle viewer ({args.baseline_seconds:g} s)", base_st)
    if control_st:
        show(f"control, bar updates every {args.seconds / steps * 1e3:.0f} ms, no job ({args.control_seconds:g} s)",
             control_st)
    show(f"during job ({args.seconds:g} s sleep, {steps} steps)", job_st)
    phase = "worker already running" if args.warm_worker else "worker start-up"
    if startup_st:
        show(f"  until first progress event ({phase})", startup_st)
    if steady_st:
        show("  after first progress event (steady)", steady_st)
    print(f"job: wall {wall:.2f} s from start() to finished ({phase} included); "
          f"progress events at the GUI {len(ev)}/{steps}"
          + (f", first after {ev[0] - state['t0']:.2f} s, interval median {median(ev_gaps) * 1e3:.0f} ms, "
             f"max {max(ev_gaps) * 1e3:.0f} ms" if len(ev) > 1 else "")
          + f"; bar at {bar.value() / 10:.1f}%")
    status = 0
    if state["error"] is not None or state["timed_out"] or state["result"] is None:
        print(f"JOB FAILED: error={state['error']!r} timed_out={state['timed_out']}")
        status = 1
    verdict = "PASS" if job_st["max"] * 1e3 < GOAL_MS else "FAIL"
    print(f"longest stall during the job: {job_st['max'] * 1e3:.1f} ms (p99 {job_st['p99'] * 1e3:.1f} ms; "
          f"idle baseline longest {base_st['max'] * 1e3:.1f} ms"
          + (f", bar-updates-only control longest {control_st['max'] * 1e3:.1f} ms" if control_st else "")
          + f"); goal < {GOAL_MS:.0f} ms -> {verdict}")
    viewer.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
