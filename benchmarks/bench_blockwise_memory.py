"""Peak memory of block-wise segmentation (scaleout/blockwise.py) against the image size.

For each size (default 4096², 8192², 16384²) a synthetic nuclei image (uint16, Gaussian blobs of
radius 4-7 px on a jittered 32 px lattice that repeats every 1024 px, 3 in 4 lattice cells filled,
noise) is generated chunk by chunk into a zarr array on disk (never whole in memory), then segmented
by the plain command in a fresh process -- ``napari-cnnvision segment IMG.zarr --out DIR`` (a zarr
input goes block-wise by itself, blocks of 2048) -- and that process's peak RSS (``ru_maxrss``), wall time and objects/s are
printed. Goal: peak < 3 GB at every size, and flat (the largest within 1.5x of the smallest).
``--segmenter threshold`` runs a cheap stand-in for the network (threshold + connected components)
through the same block-wise path (reading, stitching, OME-Zarr writing, object table): the path's own
memory and speed, when the network is too slow on the machine for 16k.

On the 4k case the image is also segmented whole (in memory, one ``api.segment`` call, its own
process and peak RSS) and the stitched labels are compared with it: AP@0.5 = TP / (TP + FP + FN)
with matches at IoU > 0.5 (goal >= 0.99).

    .venv/bin/python benchmarks/bench_blockwise_memory.py [--sizes 4096 8192 16384] [--model nuclei-unet]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import machine_note  # noqa: E402

GOAL_GB = 3.0
GOAL_FLAT = 1.5
GOAL_AP = 0.99
SPACING, CHUNK = 32, 1024  # the lattice repeats every CHUNK pixels (CHUNK / SPACING cells)


def _hash(i, j, k):
    """Deterministic pseudo-random numbers in [0, 1) per lattice cell (i, j) and stream k."""
    v = np.sin(i * 12.9898 + j * 78.233 + k * 37.719) * 43758.5453
    return v - np.floor(v)


def nuclei_chunk(y0: int, x0: int, h: int, w: int, seed: int = 0, noise: bool = True) -> np.ndarray:
    """Rows y0..y0+h, columns x0..x0+w of the synthetic nuclei image (any chunk, same image; the
    nuclei repeat every CHUNK pixels, the noise does not)."""
    i0, j0 = y0 // SPACING - 1, x0 // SPACING - 1  # the lattice cells around the chunk, one ring more
    i, j = np.mgrid[i0:(y0 + h) // SPACING + 2, j0:(x0 + w) // SPACING + 2]
    pi, pj = i % (CHUNK // SPACING), j % (CHUNK // SPACING)  # the cell's parameters repeat
    amp = 1000 * (_hash(pi, pj, seed) < 0.75).astype(np.float32)
    cy = ((i + 0.5 + 0.5 * (_hash(pi, pj, seed + 1) - 0.5)) * SPACING - y0).astype(np.float32)
    cx = ((j + 0.5 + 0.5 * (_hash(pi, pj, seed + 2) - 0.5)) * SPACING - x0).astype(np.float32)
    k = (-0.5 / (4 + 3 * _hash(pi, pj, seed + 3)) ** 2).astype(np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    ci, cj = (np.arange(h) + y0) // SPACING - i0, (np.arange(w) + x0) // SPACING - j0
    img = np.zeros((h, w), np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            a, b = (ci + di)[:, None], (cj + dj)[None, :]
            img += amp[a, b] * np.exp(k[a, b] * ((yy - cy[a, b]) ** 2 + (xx - cx[a, b]) ** 2))
    if not noise:
        return img
    rng = np.random.default_rng([seed, y0, x0])
    return np.clip(img + 100 + rng.normal(0, 20, img.shape), 0, 65535).astype(np.uint16)


def child_generate(path: str, size: int) -> dict:
    import zarr

    t0 = time.perf_counter()
    z = zarr.open_array(path, mode="w", shape=(size, size), chunks=(CHUNK, CHUNK), dtype=np.uint16, zarr_format=2)
    pattern = nuclei_chunk(0, 0, CHUNK, CHUNK, noise=False) + 100  # = every chunk's nuclei (periodic lattice)
    for y0 in range(0, size, CHUNK):
        for x0 in range(0, size, CHUNK):
            rng = np.random.default_rng([y0, x0])
            z[y0:y0 + CHUNK, x0:x0 + CHUNK] = np.clip(pattern + rng.normal(0, 20, pattern.shape).astype(np.float32),
                                                      0, 65535).astype(np.uint16)
    return {"s": time.perf_counter() - t0}


def _peak_gb() -> float:
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kb / 1024 ** 2


def child_blockwise(path: str, out: str, model: str) -> dict:
    from napari_cnnvision.cli.main import main

    t0 = time.perf_counter()
    rc = main(["segment", path, "--out", out, "--model", model, "--quiet"])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"segment exited with {rc}")
    n = sum(1 for _ in open(Path(out) / (Path(path).stem + ".csv"))) - 1
    return {"s": wall, "objects": n, "peak_gb": _peak_gb()}


def _threshold_segmenter(level: float = 400.0):
    """A stand-in for the network (``--segmenter threshold``): pixels above ``level``, connected
    components, their centroids -- cheap, so the block-wise machinery's own memory and speed show."""
    from types import SimpleNamespace

    from scipy import ndimage

    def one(window):
        lab, n = ndimage.label(np.asarray(window) > level)
        yy, xx = np.nonzero(lab)
        v = lab[yy, xx]
        area = np.bincount(v, minlength=n + 1)[1:].astype(float)
        cy = np.bincount(v, weights=yy, minlength=n + 1)[1:] / np.maximum(area, 1)
        cx = np.bincount(v, weights=xx, minlength=n + 1)[1:] / np.maximum(area, 1)
        table = {"label": np.arange(1, n + 1), "centroid_y": cy, "centroid_x": cx, "probability": np.ones(n)}
        return SimpleNamespace(labels=lab.astype(np.int32), table=table)

    return one


def child_blockwise_threshold(path: str, out: str) -> dict:
    from napari_cnnvision.core import tables
    from napari_cnnvision.scaleout.blockwise import open_source, segment_blockwise

    t0 = time.perf_counter()
    table = segment_blockwise(open_source(path), Path(out) / Path(path).name, _threshold_segmenter(), block=2048)
    tables.write_table(Path(out) / (Path(path).stem + ".csv"), table)
    return {"s": time.perf_counter() - t0, "objects": len(table["label"]), "peak_gb": _peak_gb()}


def child_whole(path: str, out: str, model: str) -> dict:
    import zarr

    from napari_cnnvision import api

    t0 = time.perf_counter()
    img = np.asarray(zarr.open_array(path, mode="r"))
    res = api.segment(img, model)
    wall = time.perf_counter() - t0
    np.save(out, np.asarray(res.labels, np.int32))
    return {"s": wall, "objects": int(res.n_objects), "peak_gb": _peak_gb()}


def ap50(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int, int]:
    """AP@0.5 of labels ``b`` against ``a`` (TP / (TP + FP + FN)), and the counts."""
    a, b = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    both = (a > 0) & (b > 0)
    key = a[both] * (int(b.max()) + 1) + b[both]
    pairs, inter = np.unique(key, return_counts=True)
    pa, pb = pairs // (int(b.max()) + 1), pairs % (int(b.max()) + 1)
    area_a, area_b = np.bincount(a), np.bincount(b)
    iou = inter / (area_a[pa] + area_b[pb] - inter)
    na, nb = int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum())
    tp = int((iou > 0.5).sum())
    return tp / max(1, na + nb - tp), tp, na, nb


def run_child(*argv) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"child {argv[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        fn = {"generate": lambda p, s: child_generate(p, int(s)), "blockwise": child_blockwise,
              "threshold": child_blockwise_threshold, "whole": child_whole}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--segmenter", choices=("model", "threshold"), default="model",
                    help="model: the CLI with --model (default); threshold: a cheap stand-in for the network "
                         "(threshold + connected components) run through the same block-wise path, so the path's "
                         "own memory and speed show on a slow machine (no whole-image comparison)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image comparison on the smallest size")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one; needs ~1 GB at 16k)")
    args = ap.parse_args()
    what = args.model if args.segmenter == "model" else "threshold stand-in (no network)"
    print(f"bench_blockwise_memory: sizes {args.sizes}, segmenter {what}; {machine_note()}", flush=True)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="bench-blockwise-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            img = tmp / f"nuclei{size}.zarr"
            g = run_child("generate", img, size)
            b = (run_child("blockwise", img, tmp / f"out{size}", args.model) if args.segmenter == "model" else
                 run_child("threshold", img, tmp / f"out{size}"))
            peaks[size] = b["peak_gb"]
            print(f"  {size:>5}²  generated in {g['s']:6.1f} s; block-wise: {b['s']:7.1f} s, {b['objects']:>7} "
                  f"objects, {b['objects'] / b['s']:7.0f} objects/s, {size * size / b['s'] / 1e6:5.2f} Mpx/s, "
                  f"peak RSS {b['peak_gb']:.2f} GB   (load {os.getloadavg()[0]:.1f})", flush=True)
            if size == min(args.sizes) and not args.no_whole and args.segmenter == "model":
                w = run_child("whole", img, tmp / f"whole{size}.npy", args.model)
                import zarr

                stitched = np.asarray(zarr.open_group(str(tmp / f"out{size}" / img.name), mode="r")["0"])
                ap50_, tp, na, nb = ap50(np.load(tmp / f"whole{size}.npy"), stitched)
                print(f"  {size:>5}²  whole image: {w['s']:7.1f} s, {w['objects']} objects, peak RSS "
                      f"{w['peak_gb']:.2f} GB; stitched vs whole: AP@0.5 {ap50_:.4f} (TP {tp}, whole {na}, "
                      f"stitched {nb})  (goal >= {GOAL_AP}) {'PASS' if ap50_ >= GOAL_AP else 'FAIL'}", flush=True)
    worst = max(peaks.values())
    print(f"  peak RSS: {', '.join(f'{s}² {g:.2f} GB' for s, g in peaks.items())}  (goal < {GOAL_GB} GB) "
          f"{'PASS' if worst < GOAL_GB else 'FAIL'}")
    if len(peaks) > 1:
        ratio = peaks[max(peaks)] / peaks[min(peaks)]
        print(f"  flat: peak {max(peaks)}² / {min(peaks)}² = {ratio:.2f}  (goal <= {GOAL_FLAT}) "
              f"{'PASS' if ratio <= GOAL_FLAT else 'FAIL'}")
        inner = [s for s in peaks if s >= 3 * 2048]  # sizes with a block that has margins on all four sides
        if len(inner) > 1:
            print(f"  among sizes with inner blocks (>= 3 blocks a side, the largest windows): peak {max(inner)}² / "
                  f"{min(inner)}² = {peaks[max(inner)] / peaks[min(inner)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
