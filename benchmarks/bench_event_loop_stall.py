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

With ``--train SECONDS`` the job is a real training run instead: the Train dock widget
(``widgets/train.py``) is docked in the viewer with an Image and a partially painted Labels
layer (synthetic nuclei), fine-tunes ``--train-base`` (default ``nuclei-unet``; ``fresh``: a
fresh U-Net) with a time budget of SECONDS, short epochs (``--train-steps`` steps each) so the
live loss plot redraws every epoch or two, and registers the model. The ticks run from the
Train press (reading the layers and building the training set on the GUI thread included) to
the widget's last callback (model saved, model lists refreshed). The press comes once the docked
widget has settled (:func:`settle_layout`: its first layout and the window's resizes to fit it, each
a full redraw of the OpenGL canvas, are over, as they are long before a user presses Train); the
canvas, dock and window resizes inside the long gaps are listed. The widget's GUI-thread work is
timed -- ``run()`` (layers -> training set -> submit), the metrics / progress / done handlers,
the plot's canvas draws -- and the longest gaps are listed with what ran inside them.

    .venv/bin/python benchmarks/bench_event_loop_stall.py [--seconds 30] [--baseline-seconds 5] [--control-seconds 5]
        [--warm-worker] [--train 45 [--train-base nuclei-unet|fresh] [--train-steps 4] [--no-settle]]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import cpu_times, ensure_display, machine_note, median, quantile, steal_note  # noqa: E402
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
    ap.add_argument("--train", type=float, default=None, metavar="SECONDS",
                    help="measure a training run from the Train widget (time budget SECONDS) instead of the sleep job")
    ap.add_argument("--train-base", default="nuclei-unet", help="model to fine-tune ('fresh': a fresh U-Net)")
    ap.add_argument("--train-steps", type=int, default=4, help="training steps per epoch (default 4)")
    ap.add_argument("--no-settle", action="store_true",
                    help="press Train 20 ms after docking the widget (its first layout inside the measurement)")
    args = ap.parse_args(argv)
    if args.train:
        import tempfile

        # the trained model goes to a temporary user folder, never the real one
        os.environ.setdefault("NAPARI_CNNVISION_DATA_DIR", tempfile.mkdtemp(prefix="bench-stall-"))
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

    cpu_at = {}  # tick time -> the GUI thread's CPU time then (what it did in a gap vs. waiting for a CPU)

    def tick(ticks):
        t = time.perf_counter()
        ticks.append(t)
        cpu_at[t] = (time.thread_time(), time.process_time())

    def measure(arm):
        """Tick every interval until ``arm(loop)`` makes the loop quit; returns the tick times."""
        ticks = []
        loop = QEventLoop()
        timer = QTimer()
        timer.setTimerType(Qt.PreciseTimer)
        timer.setInterval(args.interval_ms)
        timer.timeout.connect(lambda: tick(ticks))
        tick(ticks)
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

    if args.train:
        status = train_phase(args, viewer, measure, base_st, control_st, cpu_at)
        viewer.close()
        return status

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


def synthetic_nuclei(shape=(256, 256), n=40, seed=0):
    """An image of blurred disks (nuclei) and its instance labels; the left half is painted."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        r = rng.integers(5, 10)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (lab == 0)] = k
    img = ndimage.gaussian_filter((lab > 0) * 1.0, 1.5) + rng.normal(0, 0.08, shape)
    painted = np.where(xx < shape[1] // 2, lab, 0)
    return img.astype(np.float32), painted


class Timed:
    """Wraps callables on the GUI thread and records (start, end, label) of every call."""

    def __init__(self):
        self.calls = []

    def wrap(self, obj, attr, label=None):
        fn = getattr(obj, attr)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.calls.append((t, time.perf_counter(), label or attr))
        setattr(obj, attr, timed)
        return timed

    def inside(self, a, b):
        return [(lab, t1 - t0) for t0, t1, lab in self.calls if t1 > a and t0 < b]

    def summary(self):
        by = {}
        for t0, t1, lab in self.calls:
            by.setdefault(lab, []).append(t1 - t0)
        return by


class _Resizes:
    """Resize events of the napari canvas, the Train dock widget and the main window (time, what):
    a resized OpenGL canvas is redrawn in full, by Mesa's software renderer under Xvfb."""

    def __init__(self):
        self.events = []


def watch_resizes(viewer, widget) -> _Resizes:
    from qtpy.QtCore import QEvent, QObject

    log = _Resizes()
    watched = {"canvas": viewer.window._qt_viewer.canvas.native, "Train widget": widget.native,
               "main window": viewer.window._qt_window}

    class Filter(QObject):
        def eventFilter(self, obj, ev):  # noqa: N802 - Qt's name
            if ev.type() == QEvent.Type.Resize:
                for what, q in watched.items():
                    if obj is q:
                        log.events.append((time.perf_counter(), what))
            return False

    log.filter = Filter()
    for q in watched.values():
        q.installEventFilter(log.filter)
    return log


def settle_layout(resizes, quiet_s: float = 1.0, limit_s: float = 10.0) -> float:
    """Process events until nothing was resized for ``quiet_s`` (the docked widget's first layout
    and the window's growth to fit it are done, as they are long before a user presses Train);
    returns the seconds it took."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        app.processEvents()
        last = resizes.events[-1][0] if resizes.events else t0
        if time.perf_counter() - last >= quiet_s:
            break
        time.sleep(0.005)
    n = len(resizes.events)
    resizes.events.clear()
    print(f"the docked Train widget settled in {time.perf_counter() - t0:.1f} s ({n} resize events) before the press")
    return time.perf_counter() - t0


def train_phase(args, viewer, measure, base_st, control_st, cpu_at) -> int:
    """The Train widget fine-tunes a U-Net from a Labels layer with a time budget; the probe runs
    from the Train press to the widget's last callback."""
    from qtpy.QtCore import QTimer

    from napari_cnnvision.widgets.train import FRESH, MINUTES, TrainWidget

    started = cpu_times()

    img, painted = synthetic_nuclei()
    viewer.add_image(img, name="nuclei")
    viewer.add_labels(painted, name="painted")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    if args.warm_worker:  # the training worker started and PyTorch imported before the press
        from napari_cnnvision.widgets._compute import pool_for

        t = time.perf_counter()
        pool_for(viewer).worker_for("unet.train").run("framework_info", {"load": ("torch",)})
        print(f"training worker warmed (PyTorch imported) in {time.perf_counter() - t:.1f} s before the press")
    timed = Timed()
    # the widget's GUI-thread work (instance attributes: the runner's callbacks are bound at start)
    for attr in ("_on_metrics", "_on_progress", "_on_done", "report_error"):
        timed.wrap(w, attr)
    plot = w.plot
    if hasattr(plot, "canvas"):  # a plot drawn on the GUI thread (matplotlib's Qt canvas)
        timed.wrap(plot.canvas, "draw", "plot canvas draw")
    if hasattr(plot, "_show"):  # a plot drawn on its own thread: the GUI thread only shows the image
        timed.wrap(plot, "_show", "plot image shown")
    import napari_cnnvision.widgets.train as train_mod

    timed.wrap(train_mod, "refresh_model_lists", "refresh model lists")
    resizes = watch_resizes(viewer, w)
    if not args.no_settle:
        settle_layout(resizes)
    w.task.value = "segment"
    w.image.value = viewer.layers["nuclei"]
    w.target.value = viewer.layers["painted"]
    w.base.value = FRESH if args.train_base == "fresh" else args.train_base
    w.name.value = "stall-bench"
    w.budget.value = MINUTES
    w.minutes.value = args.train / 60
    w.val_fraction.value = 0.25
    w.advanced = {"steps_per_epoch": args.train_steps, "batch_size": 2, "patch_size": 64}
    if args.train_base == "fresh":
        w.advanced.update({"depth": 2, "base_filters": 8})
    state = {"t0": None, "end": None, "timed_out": False}
    finished = {"n": 0}

    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()

    def start():
        state["t0"] = time.perf_counter()
        t, c = time.perf_counter(), time.thread_time()
        prof.enable()
        w.run()
        prof.disable()
        timed.calls.append((t, time.perf_counter(), "run() (layers -> training set -> submit)"))
        state["run_cpu"] = time.thread_time() - c

    def arm(loop):
        QTimer.singleShot(20, start)

        def poll():
            if state["t0"] is not None and not w.runner.running:
                finished["n"] += 1
                if finished["n"] >= 30:  # 300 ms after the end: the last callbacks have run
                    loop.quit()
                    return
            QTimer.singleShot(10, poll)
        QTimer.singleShot(30, poll)

        def too_long():
            state["timed_out"] = True
            w.runner.cancel()
            loop.quit()
        QTimer.singleShot(int((args.train + 240) * 1000), too_long)

    ticks = measure(arm)
    if state["t0"] is not None:  # from the last tick before the Train press (its gap holds run())
        ticks = ticks[max(0, max((i for i, t in enumerate(ticks) if t < state["t0"]), default=0)):]
    st = gap_stats(ticks)
    by = timed.summary()
    first_metrics = min((t0 for t0, _, lab in timed.calls if lab == "_on_metrics"), default=None)
    print(f"probe: QTimer every {args.interval_ms} ms on the GUI thread; a gap is the time between two ticks")
    print(f"OpenGL renderer: {gl_renderer(viewer)}; window {viewer.window._qt_window.width()}x"
          f"{viewer.window._qt_window.height()}")
    show(f"baseline, idle viewer ({args.baseline_seconds:g} s)", base_st)
    if control_st:
        show(f"control, progress-bar updates, no job ({args.control_seconds:g} s)", control_st)
    show(f"during training (Train press .. last callback, budget {args.train:g} s)", st)
    if first_metrics:
        show("  until the first epoch's metrics (submit, worker start-up, first epoch)",
             gap_stats([t for t in ticks if t <= first_metrics]))
        show("  from the first epoch's metrics on (steady, live plot)",
             gap_stats([t for t in ticks if t >= first_metrics]))
    print(f"result: {w.status.value}")
    print(f"epochs plotted: {len(w.plot.epochs)}"
          + (f"; plot drawings off the GUI thread: {w.plot.draws}" if hasattr(w.plot, "draws") else ""))
    print("GUI-thread work of the widget (calls, median / max ms):")
    for lab, ds in sorted(by.items(), key=lambda kv: -max(kv[1])):
        print(f"  {lab:45s} {len(ds):4d} calls  {median(ds) * 1e3:7.1f} / {max(ds) * 1e3:7.1f}")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(12)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip() and ("/" in ln or "{" in ln)]
    print(f"run() on the GUI thread: {state.get('run_cpu', float('nan')) * 1e3:.1f} ms CPU; its top entries "
          "(cumulative s):")
    for ln in lines[:12]:
        parts = ln.split(None, 5)
        if len(parts) == 6:
            where = parts[5].replace(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/", "")
            print(f"  {parts[3]:>8s}  {where[-110:]}")
    gaps = sorted(((b - a, a, b) for a, b in zip(ticks, ticks[1:])), reverse=True)[:8]
    print("longest gaps: the CPU time used in them (far below the gap: napari waited for a CPU, i.e. the "
          "machine's load, or for the X server) and what of the widget ran inside them:")
    for g, a, b in gaps:
        inside = ", ".join(f"{lab} {d * 1e3:.0f} ms" for lab, d in timed.inside(a, b)) or "nothing of the widget"
        sized = sorted({what for t, what in resizes.events if a <= t <= b})
        if sized:
            inside += f"; resized: {', '.join(sized)}"
        cpu = (cpu_at[b][0] - cpu_at[a][0]) * 1e3 if a in cpu_at and b in cpu_at else float("nan")
        proc = (cpu_at[b][1] - cpu_at[a][1]) * 1e3 if a in cpu_at and b in cpu_at else float("nan")
        print(f"  {g * 1e3:7.1f} ms at {a - ticks[0]:6.2f} s: GUI thread CPU {cpu:6.1f} ms, all threads of "
              f"napari's process {proc:6.1f} ms; {inside}")
    cpu_gaps = [(cpu_at[b][0] - cpu_at[a][0]) for a, b in zip(ticks, ticks[1:]) if a in cpu_at and b in cpu_at]
    if cpu_gaps:
        print(f"GUI-thread CPU time per gap: median {median(cpu_gaps) * 1e3:.1f} ms, p99 "
              f"{quantile(cpu_gaps, 0.99) * 1e3:.1f} ms, max {max(cpu_gaps) * 1e3:.1f} ms (the stall the "
              "work itself would cause on an idle machine)")
    status = 0
    if state["timed_out"] or not w.status.value.startswith("saved model"):
        print(f"TRAINING FAILED: timed_out={state['timed_out']} status={w.status.value!r}")
        status = 1
    verdict = "PASS" if st["max"] * 1e3 < GOAL_MS else "FAIL"
    print(f"longest stall during training: {st['max'] * 1e3:.1f} ms (p99 {st['p99'] * 1e3:.1f} ms, median "
          f"{st['median'] * 1e3:.1f} ms; idle baseline longest {base_st['max'] * 1e3:.1f} ms); goal < "
          f"{GOAL_MS:.0f} ms -> {verdict}")
    print(f"load: {machine_note()}; {steal_note(started)} during the run")
    return status


if __name__ == "__main__":
    sys.exit(main())
