"""napari start-up time with the plugin installed vs. hidden, side by side in one run.

Each sample is a fresh Python process (same interpreter, same X display) that runs
``import napari; napari.Viewer(show=True)``, processes Qt events until the main window is
exposed, reports the time and exits. The time is taken from just before the parent
launches the process to the child's "ready" moment (both read the wall clock).

"Without the plugin" is the very same child with napari-cnnvision's distribution hidden
from ``importlib.metadata.distributions()`` (which is what npe2 walks to discover
``napari.manifest`` entry points; ``importlib.metadata.entry_points()`` is built from
it too). Filtering only ``importlib.metadata.entry_points`` does NOT hide the plugin,
because npe2 never calls it; ``--compare-hiding`` demonstrates that. Both modes run the
same wrapper, so its cost is identical. Each child reports whether the plugin's widgets
are registered (npe2 and napari's app-model), and the script checks that they are there
with the plugin and absent without it.

Samples are interleaved (with/without, then without/with, ...) so drifting load on the
machine affects both modes alike.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 7] [--no-show]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import ROOT, ensure_display, machine_note, median, quantile  # noqa: E402

PLUGIN_DIST = "napari_cnnvision"  # normalized distribution name
GOAL_S = 0.2

# The child: argv = [mode, show]; mode is "with", "without" (distribution hidden) or
# "ep-filter" (only importlib.metadata.entry_points filtered: shown not to hide it).
CHILD = r'''
import sys, os, time, json
t_python = time.time()
mode, show = sys.argv[1], sys.argv[2] == "1"
import importlib.metadata as _md

def _dist_key(d):
    p = getattr(d, "_path", None)
    if p is not None:
        name = os.path.basename(str(p).rstrip("/\\"))
        for suffix in (".dist-info", ".egg-info"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        name = name.split("-")[0]
    else:
        name = d.metadata["Name"] or ""
    return name.lower().replace("-", "_").replace(".", "_")

_orig_distributions = _md.distributions

def _distributions(**kw):
    for d in _orig_distributions(**kw):
        if _dist_key(d) == PLUGIN_DIST and mode == "without":
            continue
        yield d

_md.distributions = _distributions  # same wrapper in every mode: same cost

if mode == "ep-filter":
    _orig_eps = _md.entry_points
    def _entry_points(**kw):
        eps = _orig_eps(**kw)
        if kw.get("group") == "napari.manifest":
            return _md.EntryPoints([e for e in eps if e.name != "napari-cnnvision"])
        return eps
    _md.entry_points = _entry_points

_prof = {}
if mode == "profile":  # attribute discovery/registration time to each plugin (not a timed launch)
    import collections
    _prof = collections.defaultdict(float)
    def _timed(key, func):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                try:
                    _prof[key(*a, **k)] += time.perf_counter() - t0
                except Exception:
                    pass
        return wrapper
    import npe2.manifest.schema as _schema
    from npe2 import PluginManager as _PM
    import napari.plugins._npe2 as _n2
    _schema._from_dist = _timed(lambda d: "discover (manifest parse)|" + str(d.metadata["Name"]), _schema._from_dist)
    _PM.register = _timed(lambda self, mf, *a, **k: "npe2 register|" + str(getattr(mf, "name", mf)), _PM.register)
    _n2._register_manifest_actions = _timed(lambda mf: "napari app-model actions|" + mf.name,
                                            _n2._register_manifest_actions)
    _n2._safe_register_qt_actions = _timed(lambda mf: "napari Qt actions|" + mf.name, _n2._safe_register_qt_actions)

import napari
t_import = time.time()
viewer = napari.Viewer(show=show)
from qtpy.QtWidgets import QApplication
app = QApplication.instance()
qt_window = viewer.window._qt_window
deadline = time.time() + 60
while True:
    app.processEvents()
    if not show:
        break
    handle = qt_window.windowHandle()
    if handle is not None and handle.isExposed():
        app.processEvents()
        break
    if time.time() > deadline:
        raise SystemExit("the napari window was never exposed")
    time.sleep(0.001)
t_ready = time.time()

from npe2 import PluginManager
from napari._app_model import get_app_model
pm = PluginManager.instance()
widgets = sorted(w.display_name for w in pm.iter_widgets() if w.plugin_name == "napari-cnnvision")
commands = sorted(str(c) for c, _ in get_app_model().commands if str(c).startswith("napari-cnnvision."))
menu = [a.text() for a in viewer.window.plugins_menu.actions()] if hasattr(viewer.window, "plugins_menu") else []
print("@@RESULT " + json.dumps({
    "python": t_python, "import": t_import, "ready": t_ready,
    "widgets": widgets, "commands": commands, "in_menu": "CNN Vision" in menu,
    "imported": sorted(m for m in sys.modules if m.startswith("napari_cnnvision")),
    "profile": dict(_prof),
    "n_dists": sum(1 for d in _orig_distributions() if _dist_key(d) == PLUGIN_DIST),
}), flush=True)
os._exit(0)  # teardown is not part of start-up
'''.replace("PLUGIN_DIST", repr(PLUGIN_DIST))


def launch(mode: str, show: bool, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, "1" if show else "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    t_end = time.time()
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            r = json.loads(line[len("@@RESULT "):])
            r.update(total=r["ready"] - t0, interpreter=r["python"] - t0, import_napari=r["import"] - r["python"],
                     viewer=r["ready"] - r["import"], process=t_end - t0)
            return r
    raise RuntimeError(f"{mode} child failed (exit code {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                       f"{proc.stderr[-4000:]}")


def check(r: dict) -> str:
    return (f"widgets={r['widgets'] or 'none'}, app-model commands={len(r['commands'])}, "
            f"'CNN Vision' in Plugins menu={r['in_menu']}, plugin modules imported at start-up={r['imported'] or 'none'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="samples per mode (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="unreported launches per mode first (default 1)")
    ap.add_argument("--no-show", dest="show", action="store_false",
                    help="Viewer(show=False): ready right after construction (default: show and wait until exposed)")
    ap.add_argument("--compare-hiding", action="store_true",
                    help="also launch once with only importlib.metadata.entry_points filtered (shows it does not hide the plugin)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per launch (default 120)")
    args = ap.parse_args(argv)

    ensure_display()
    print(f"== napari start-up with vs without napari-cnnvision (show={args.show}) ==")
    print(f"machine: {machine_note()}")

    # Warm-up (disk caches, .pyc files, napari settings) and the registration check.
    ok = True
    for i in range(max(args.warmup, 1)):
        w_with = launch("with", args.show, args.timeout)
        w_without = launch("without", args.show, args.timeout)
    print(f"check  with plugin:    {check(w_with)}")
    print(f"check  without plugin: {check(w_without)}")
    if not (w_with["widgets"] and w_with["in_menu"]) or w_without["widgets"] or w_without["commands"] \
            or w_without["in_menu"]:
        ok = False
        print("CHECK FAILED: the plugin is not registered in one mode and absent in the other")
    prof = launch("profile", args.show, args.timeout)
    mine = {k.split("|")[0]: v for k, v in prof["profile"].items() if k.split("|")[1] == "napari-cnnvision"}
    all_plugins = sum(prof["profile"].values())
    print(f"profile (one extra launch with the plugin): time spent on napari-cnnvision inside napari's start-up: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in mine.items())
          + f"; total {sum(mine.values()) * 1e3:.1f} ms (all plugins: {all_plugins * 1e3:.1f} ms; "
          f"the plugin's distribution is found {prof['n_dists']}x by importlib.metadata)")
    if args.compare_hiding:
        ep = launch("ep-filter", args.show, args.timeout)
        print(f"check  entry_points() filtered only: {check(ep)}  "
              f"-> {'still registered: this way does NOT hide it' if ep['widgets'] else 'hidden'}")

    samples = {"with": [], "without": []}
    for i in range(args.repeats):
        order = ("with", "without") if i % 2 == 0 else ("without", "with")
        for mode in order:
            samples[mode].append(launch(mode, args.show, args.timeout))
        print(f"  repeat {i + 1}/{args.repeats}: with {samples['with'][-1]['total']:.3f} s, "
              f"without {samples['without'][-1]['total']:.3f} s", flush=True)

    def stat(mode, key, f=median):
        return f([s[key] for s in samples[mode]])

    print()
    print(f"{'phase (median s)':<28}{'with':>10}{'without':>10}{'diff':>10}")
    for key, label in (("interpreter", "interpreter start"), ("import_napari", "import napari"),
                       ("viewer", "Viewer() until ready"), ("total", "process start -> ready")):
        a, b = stat("with", key), stat("without", key)
        print(f"{label:<28}{a:>10.3f}{b:>10.3f}{a - b:>+10.3f}")
    a, b = stat("with", "total"), stat("without", "total")
    pairs = [x["total"] - y["total"] for x, y in zip(samples["with"], samples["without"])]
    print()
    print(f"start-up median with plugin:    {a:.3f} s  (min {stat('with', 'total', min):.3f}, "
          f"p90 {quantile([s['total'] for s in samples['with']], 0.9):.3f}, n={args.repeats})")
    print(f"start-up median without plugin: {b:.3f} s  (min {stat('without', 'total', min):.3f}, "
          f"p90 {quantile([s['total'] for s in samples['without']], 0.9):.3f}, n={args.repeats})")
    print(f"difference (median with - median without): {a - b:+.3f} s; median of paired differences "
          f"{median(pairs):+.3f} s; ratio {a / b:.3f}")
    verdict = "PASS" if a - b <= GOAL_S else "FAIL"
    print(f"goal: difference <= +{GOAL_S} s -> {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
