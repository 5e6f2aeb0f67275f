"""Throughput of Dask batches (scaleout/) against the plain in-process command.

The same N small synthetic nuclei images (128 x 128, uint16) are segmented with the shipped
U-Net (PyTorch) three times, each run a fresh ``napari-cnnvision segment`` process into an
empty output folder, timed from start to exit (so start-up -- the cluster's and the model's --
counts, as it does for a user):

  plain       the in-process loop (one process, the framework's default threads)
  workers 1   a LocalCluster of one worker process (all cores' framework threads)
  workers 2   a LocalCluster of two worker processes (the cores shared out)

and prints images/s of each and the ratios ``workers 1 / plain`` (goal >= 0.9: the overhead of
Dask's scheduling, the task round trips and the client-side writing) and ``workers 2 / workers 1``
(ideal: the number of cores, when nothing else runs). All outputs are checked to be complete.

    .venv/bin/python benchmarks/bench_scaleout.py [--n 200] [--size 128] [--model nuclei-unet]
"""
from __future__ import annotations

import argparse
import os
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


def timed_run(inp: Path, out: Path, model: str, extra: list[str], n: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([CLI, "segment", str(inp), "--out", str(out), "--model", model, "--quiet", *extra],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or f"segmented {n}," not in r.stdout:
        raise SystemExit(f"run {' '.join(extra) or 'plain'} failed:\n{r.stdout}\n{r.stderr[-3000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    ap.add_argument("--model", default="nuclei-unet")
    args = ap.parse_args()
    print(f"bench_scaleout: {args.n} images of {args.size} x {args.size}, model {args.model}; {machine_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        make_images(inp, args.n, args.size)
        runs = {"plain": [], "workers 1": ["--workers", "1"], "workers 2": ["--workers", "2"]}
        rate = {}
        for name, extra in runs.items():
            wall = timed_run(inp, tmp / name.replace(" ", "-"), args.model, extra, args.n)
            rate[name] = args.n / wall
            print(f"  {name:<10} {wall:7.1f} s  {rate[name]:6.2f} images/s")
    over = rate["workers 1"] / rate["plain"]
    scale = rate["workers 2"] / rate["workers 1"]
    print(f"  workers 1 / plain     : {over:.2f}  (goal >= {GOAL_OVERHEAD}) {'PASS' if over >= GOAL_OVERHEAD else 'FAIL'}")
    print(f"  workers 2 / workers 1 : {scale:.2f}  (ideal {min(2, os.cpu_count() or 1)} on this machine)")
    print(f"  per image: plain {1e3 / rate['plain']:.0f} ms, workers 1 {1e3 / rate['workers 1']:.0f} ms, "
          f"workers 2 {1e3 / rate['workers 2']:.0f} ms (wall / N, start-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
