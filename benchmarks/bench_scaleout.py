"""Throughput of Dask batches (scaleout/) against the plain in-process command.

The same N small synthetic nuclei images (256 x 256 by default, uint16) are segmented with the shipped
U-Net (PyTorch) three times, each run a fresh ``napari-cnnvision segment`` process into an
empty output folder, timed from start to exit (so start-up -- the cluster's and the model's --
counts, as it does for a user):

  plain       the in-process loop (one process, the framework's default threads)
  workers 1   a LocalCluster of one worker process (all cores' framework threads)
  workers 2   a LocalCluster of two worker processes (the cores shared out)

(``--rounds R``: R rounds, every other one in the reverse order, so that a load that drifts during
the rounds weighs on all the configurations alike; medians) and prints images/s of each and the
ratios ``workers 1 / plain`` (goal >= 0.9: the overhead of Dask's scheduling, the task round trips
and the client-side writing) and ``workers 2 / workers 1``
(ideal: the number of cores, when nothing else runs). All outputs are checked to be complete.
The Dask runs also print where their time went (from the command's own ``dask:`` lines): the
cluster's start, the first image (the worker imports the framework and loads the model), the
steady time per image after it, and the cluster's close -- the figures of the cluster model in
benchmarks/README.md. Each run also prints the CPU time its processes used (the command, the Dask
scheduler, nanny and worker processes: user + system) and the load average at its start and end: on
a shared machine the CPU time shows the overhead that the wall time mixes with the others' load.

    .venv/bin/python benchmarks/bench_scaleout.py [--n 200] [--size 256] [--model nuclei-unet] [--rounds 1]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import machine_note  # noqa: E402

GOAL_OVERHEAD = 0.9
CLI = str(Path(sys.executable).with_name("napari-cnnvision"))


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        img = np.zeros((size, size), np.float32)
        for _ in range(max(1, size * size // 1500)):
            cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(4, 8)]
            img += 1000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        tifffile.imwrite(folder / f"img{k:05d}.tif", np.clip(img + rng.normal(0, 20, img.shape), 0, 65535)
                         .astype(np.uint16))


PHASES = {"start": r"started in ([\d.]+) s", "first": r"first image done ([\d.]+) s",
          "all": r"images in ([\d.]+) s after submitting", "close": r"closed in ([\d.]+) s"}


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: the workers too
    return r.ru_utime + r.ru_stime


def timed_run(inp: Path, out: Path, model: str, extra: list[str], n: int) -> tuple[float, dict]:
    """``(wall s, phases)``; phases has the command's ``dask:`` figures, ``cpu`` (s) and ``load`` (start, end)."""
    load0, cpu0 = os.getloadavg()[0], _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run([CLI, "segment", str(inp), "--out", str(out), "--model", model, "--quiet", *extra],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or f"segmented {n}," not in r.stdout:
        raise SystemExit(f"run {' '.join(extra) or 'plain'} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
    phases = {k: float(m.group(1)) for k, pat in PHASES.items() if (m := re.search(pat, r.stderr))}
    phases.update(cpu=_children_cpu() - cpu0, load=(load0, os.getloadavg()[0]))
    return wall, phases


def _noop(i):
    return i


def probe_overheads(n_tasks: int, out: Path) -> dict:
    """Per-task figures of the cluster model: the scheduler round trip of a task that does nothing
    (one worker process, as_completed as in run_batch) and the client's writing of one image's
    outputs (labels TIFF + table CSV of a segmented image from ``out``)."""
    import logging

    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.gather(client.map(_noop, range(20), pure=False))  # warm
        t0 = time.perf_counter()
        for f in as_completed(client.map(_noop, range(n_tasks), pure=False)):
            f.result()
        sched = (time.perf_counter() - t0) / n_tasks
    import csv

    import tifffile

    from napari_cnnvision.cli.segment import write_outputs
    from napari_cnnvision.core.results import SegmentationResult

    tif = sorted(out.glob("*.tif"))[0]
    with open(tif.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else ["label"])}
    res = SegmentationResult(tifffile.imread(tif), table, "m")
    t0 = time.perf_counter()
    for k in range(20):
        write_outputs(res, out / f"probe{k}.tif", out / f"probe{k}.csv")
    write = (time.perf_counter() - t0) / 20
    return {"sched_ms": 1e3 * sched, "write_ms": 1e3 * write}


CONFIGS = {"plain": [], "workers 1": ["--workers", "1"], "workers 2": ["--workers", "2"]}


def main() -> int:
    import shutil
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each configuration (medians; default 1)")
    ap.add_argument("--probe-tasks", type=int, default=300, help="no-op tasks timed for the scheduler overhead")
    args = ap.parse_args()
    print(f"bench_scaleout: {args.n} images of {args.size} x {args.size}, model {args.model}, {args.rounds} "
          f"round(s); {machine_note()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        make_images(inp, args.n, args.size)
        rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
        cpus: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for k in range(args.rounds):
            order = list(CONFIGS) if k % 2 == 0 else list(CONFIGS)[::-1]
            for name in order:
                out = tmp / name.replace(" ", "-")
                shutil.rmtree(out, ignore_errors=True)
                wall, ph = timed_run(inp, out, args.model, CONFIGS[name], args.n)
                rates[name].append(args.n / wall)
                cpus[name].append(ph["cpu"])
                more = ""
                if {"start", "first", "all", "close"} <= set(ph):
                    steady = (ph["all"] - ph["first"]) / max(1, args.n - 1)
                    rest = wall - ph["start"] - ph["all"] - ph["close"]
                    more = (f"   cluster start {ph['start']:.1f} s, first image {ph['first']:.1f} s, then "
                            f"{1e3 * steady:.0f} ms/image, close {ph['close']:.1f} s, rest (imports, planning) "
                            f"{rest:.1f} s")
                print(f"  [{k + 1}] {name:<10} {wall:7.1f} s  {args.n / wall:6.2f} images/s  cpu {ph['cpu']:6.1f} s"
                      f"  (load {ph['load'][0]:.1f} -> {ph['load'][1]:.1f}){more}", flush=True)
        pr = probe_overheads(args.probe_tasks, tmp / "plain")
        print(f"  per task: scheduler round trip {pr['sched_ms']:.1f} ms (no-op tasks, 1 worker), client writes "
              f"one image's outputs in {pr['write_ms']:.1f} ms", flush=True)
    rate = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    over = rate["workers 1"] / rate["plain"]
    scale = rate["workers 2"] / rate["workers 1"]
    how = "median of each" if args.rounds > 1 else "one run each"
    verdict = "PASS" if over >= GOAL_OVERHEAD else "FAIL"
    print(f"  workers 1 / plain     : {over:.2f}  (goal >= {GOAL_OVERHEAD}) {verdict}  ({how})")
    print(f"  workers 2 / workers 1 : {scale:.2f}  (ideal {min(2, os.cpu_count() or 1)} on this machine)")
    print(f"  per image: plain {1e3 / rate['plain']:.0f} ms, workers 1 {1e3 / rate['workers 1']:.0f} ms, "
          f"workers 2 {1e3 / rate['workers 2']:.0f} ms (wall / N, start-up included)")
    print(f"  CPU time: plain {cpu['plain']:.1f} s, workers 1 {cpu['workers 1']:.1f} s "
          f"({cpu['workers 1'] / cpu['plain']:.2f}x), workers 2 {cpu['workers 2']:.1f} s "
          f"({cpu['workers 2'] / cpu['plain']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
