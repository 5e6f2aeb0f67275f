"""Peak memory of block-wise segmentation (scaleout/blockwise.py) against the image size.

For each size (default 4096², 8192², 16384²) a synthetic nuclei image (uint16, Gaussian blobs of
radius 4-7 px on a jittered 32 px lattice that repeats every 1024 px, 3 in 4 lattice cells filled,
noise) is generated chunk by chunk on disk (never whole in memory) -- a contiguous TIFF (default) or
a zarr array (``--input zarr``) -- then segmented the way a user would, by the installed command in a
fresh process: ``napari-cnnvision segment IMG.tif --out DIR --model M`` (a TIFF above the command's
threshold, 4096 x 4096 px, goes block-wise by itself, blocks of 2048; at or below it the run adds
``--blocks 2048``; a zarr input always goes block-wise). Measured: wall time, objects/s and the peak
memory of the whole process tree -- the command and every process it starts (a compute worker, say):
the larger of (a) their summed PSS (shared pages counted once) sampled every 250 ms from /proc and (b) the exact ``ru_maxrss`` of
the largest single process. Goal: peak < 3 GB at every size, and flat (the largest within 1.5x of the
smallest). ``--segmenter threshold`` runs a cheap stand-in for the network (threshold + connected
components) through the same block-wise path (reading, stitching, OME-Zarr writing, object table):
the path's own memory and speed, when the network is too slow on the machine for 16k.

On the smallest size the image is also segmented whole by the same command (the threshold raised
so that it loads the image whole; measured the same way), and the stitched labels are compared with
it: AP@0.5 = TP / (TP + FP + FN) with matches at IoU > 0.5 (goal >= 0.99).

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
    """The image at ``path``: a zarr array (``.zarr``) or a contiguous, uncompressed TIFF (``.tif``),
    written chunk by chunk."""
    t0 = time.perf_counter()
    if path.endswith(".tif"):
        import tifffile

        z = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)
    else:
        import zarr

        z = zarr.open_array(path, mode="w", shape=(size, size), chunks=(CHUNK, CHUNK), dtype=np.uint16,
                            zarr_format=2)
    pattern = nuclei_chunk(0, 0, CHUNK, CHUNK, noise=False) + 100  # = every chunk's nuclei (periodic lattice)
    for y0 in range(0, size, CHUNK):
        for x0 in range(0, size, CHUNK):
            rng = np.random.default_rng([y0, x0])
            z[y0:y0 + CHUNK, x0:x0 + CHUNK] = np.clip(pattern + rng.normal(0, 20, pattern.shape).astype(np.float32),
                                                      0, 65535).astype(np.uint16)
    if hasattr(z, "flush"):
        z.flush()
    del z
    return {"s": time.perf_counter() - t0}


def _peak_gb() -> float:
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kb / 1024 ** 2


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _pss(pid: int) -> int:
    """Proportional set size (bytes) of ``pid``: its private pages plus its share of the pages it
    shares (``/proc/PID/smaps_rollup``); the resident size where that file is missing."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def tree_rss(root: int) -> tuple[int, int]:
    """Memory (bytes) of process ``root`` and all its descendants together, and how many they are
    (Linux ``/proc``: each thread's ``children`` file, so only the tree is read). Summed PSS, so
    pages the processes share are counted once: a child just forked from a large parent shares all
    its pages until it execs, and summed RSS would count them twice."""
    total = n = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            total += _pss(pid)
            n += 1
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    return total, n


def child_measure(cmd: str, env: str, log: str) -> dict:
    """Run the command ``cmd`` (JSON list; ``env``: JSON dict of extra variables) and measure its
    whole process tree: the summed PSS of the command and all its descendants (a compute worker,
    say) sampled every 250 ms, and the exact peak RSS of the largest single process (``ru_maxrss``
    of this process's children: the command and every descendant it waited for). The command's
    output goes to ``log``, each line (progress-bar updates too) with the seconds since the start,
    and every 10 s a ``[mem]`` line with the tree's RSS then and its peak so far: a run stopped
    before its end still shows its rate per block and its memory over time."""
    import threading

    argv = json.loads(cmd)
    t0 = time.perf_counter()
    lock = threading.Lock()
    peak = [0, 0]
    with open(log, "w") as fh:
        def note(line: str):
            with lock:
                fh.write(f"{time.perf_counter() - t0:9.1f} s  {line.rstrip()}\n")
                fh.flush()

        proc = subprocess.Popen(argv, env={**os.environ, **json.loads(env)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

        def sample():
            last = 0.0
            while proc.poll() is None:
                rss, n = tree_rss(proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], n)
                if time.perf_counter() - last >= 10:
                    last = time.perf_counter()
                    note(f"[mem] tree {rss / 1024 ** 3:.3f} GB in {n} processes, peak so far "
                         f"{peak[0] / 1024 ** 3:.3f} GB; the command's CPU so far {cpu_s(proc.pid):.0f} s")
                time.sleep(0.25)

        def read():
            buf = b""
            while chunk := proc.stdout.read1(65536):
                parts = buf + chunk
                *lines, buf = parts.replace(b"\r", b"\n").split(b"\n")
                if buf.strip() and b"\r" in parts[parts.rfind(b"\n") + 1:]:
                    lines.append(buf)  # a progress bar's line ("\r...", no newline): complete when written
                    buf = b""
                for ln in lines:
                    if ln.strip():
                        note(ln.decode(errors="replace"))
            if buf.strip():
                note(buf.decode(errors="replace"))

        threads = [threading.Thread(target=f, daemon=True) for f in (sample, read)]
        for th in threads:
            th.start()
        rc = proc.wait()
        for th in threads:
            th.join()
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    largest = ru.ru_maxrss / 1024 ** 2
    return {"rc": rc, "s": wall, "tree_gb": peak[0] / 1024 ** 3, "largest_gb": largest, "procs": peak[1],
            "peak_gb": max(peak[0] / 1024 ** 3, largest), "cpu_s": ru.ru_utime + ru.ru_stime}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and of its children it has waited for."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in f[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def cli_command() -> list[str]:
    """The installed ``napari-cnnvision`` command beside this Python (else on PATH)."""
    import shutil

    exe = Path(sys.executable).with_name("napari-cnnvision")
    found = str(exe) if exe.exists() else shutil.which("napari-cnnvision")
    if not found:
        raise SystemExit("the napari-cnnvision command is not installed (pip install -e .)")
    return [found]


def measured(argv: list, log: Path, env: dict | None = None) -> dict:
    """``argv`` run under :func:`child_measure` in a fresh process; its figures."""
    r = run_child("measure", json.dumps([str(a) for a in argv]), json.dumps(env or {}), log)
    if r["rc"] != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} exited with {r['rc']}:\n{log.read_text()[-4000:]}")
    return r


def count_rows(csv: Path) -> int:
    with open(csv) as fh:
        return sum(1 for _ in fh) - 1


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
    table = segment_blockwise(open_source(path), Path(out) / (Path(path).stem + ".zarr"), _threshold_segmenter(),
                              block=2048)
    tables.write_table(Path(out) / (Path(path).stem + ".csv"), table)
    return {"s": time.perf_counter() - t0, "objects": len(table["label"]), "peak_gb": _peak_gb()}


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
        fn = {"generate": lambda p, s: child_generate(p, int(s)), "threshold": child_blockwise_threshold,
              "measure": child_measure}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--segmenter", choices=("model", "threshold"), default="model",
                    help="model: the napari-cnnvision command with --model (default); threshold: a cheap stand-in "
                         "for the network (threshold + connected components) run through the same block-wise path, "
                         "so the path's own memory and speed show on a slow machine (no whole-image comparison)")
    ap.add_argument("--input", choices=("tif", "zarr"), default="tif",
                    help="the image as a contiguous TIFF (default; above the command's threshold it goes "
                         "block-wise by itself, at or below it gets --blocks 2048) or a zarr array (always block-wise)")
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image comparison on the smallest size")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one; needs ~1 GB at 16k)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (images, outputs, logs)")
    args = ap.parse_args()
    from napari_cnnvision.scaleout import large

    what = args.model if args.segmenter == "model" else "threshold stand-in (no network)"
    print(f"bench_blockwise_memory: sizes {args.sizes}, segmenter {what}, input {args.input}; {machine_note()}",
          flush=True)
    peaks = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-blockwise-", dir=args.tmp))
    try:
        for size in args.sizes:
            img = tmp / f"nuclei{size}.{args.input}"
            out = tmp / f"out{size}"
            g = run_child("generate", img, size)
            if args.segmenter == "model":
                argv = [*cli_command(), "segment", img, "--out", out, "--model", args.model]
                if args.input == "tif" and size * size <= large.block_threshold():
                    argv += ["--blocks", large.DEFAULT_BLOCK]  # not above the threshold: not block-wise by itself
                print(f"  $ {' '.join(map(str, argv))}    (output: {tmp / f'log{size}.txt'})", flush=True)
                b = measured(argv, tmp / f"log{size}.txt")
                b["objects"] = count_rows(out / f"{img.stem}.csv")
            else:
                b = measured([sys.executable, __file__, "--child", "threshold", img, out], tmp / f"log{size}.txt")
                lines = [ln.split(" s  ", 1)[1] for ln in (tmp / f"log{size}.txt").read_text().splitlines()]
                b["objects"] = json.loads([ln for ln in lines if ln.startswith("{")][-1])["objects"]
            peaks[size] = b["peak_gb"]
            print(f"  {size:>5}²  generated in {g['s']:6.1f} s; block-wise: {b['s']:7.1f} s, {b['objects']:>7} "
                  f"objects, {b['objects'] / b['s']:7.1f} objects/s, {size * size / b['s'] / 1e6:6.3f} Mpx/s, "
                  f"CPU {b['cpu_s']:.0f} s ({b['objects'] / b['cpu_s']:.1f} objects per CPU-second), "
                  f"peak RSS {b['peak_gb']:.2f} GB (process tree summed PSS {b['tree_gb']:.2f} GB over up to "
                  f"{b['procs']} processes, largest process {b['largest_gb']:.2f} GB)   (load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
            if size == min(args.sizes) and not args.no_whole and args.segmenter == "model":
                tif = img
                if args.input != "tif":
                    tif = tmp / f"nuclei{size}.tif"
                    run_child("generate", tif, size)
                argv = [*cli_command(), "segment", tif, "--out", tmp / f"whole{size}", "--model", args.model, "--quiet"]
                print(f"  $ {large.BLOCK_PIXELS_ENV}={size * size} {' '.join(map(str, argv))}", flush=True)
                w = measured(argv, tmp / f"whole{size}.txt", {large.BLOCK_PIXELS_ENV: str(size * size)})
                import tifffile
                import zarr

                whole = tifffile.imread(tmp / f"whole{size}" / f"{tif.stem}.tif")
                stitched = np.asarray(zarr.open_group(str(out / f"{img.stem}.zarr"), mode="r")["0"])
                ap50_, tp, na, nb = ap50(whole, stitched)
                print(f"  {size:>5}²  whole image: {w['s']:7.1f} s, CPU {w['cpu_s']:.0f} s, {na} objects, peak RSS "
                      f"{w['peak_gb']:.2f} GB; "
                      f"stitched vs whole: AP@0.5 {ap50_:.4f} (TP {tp}, whole {na}, stitched {nb})  "
                      f"(goal >= {GOAL_AP}) {'PASS' if ap50_ >= GOAL_AP else 'FAIL'}", flush=True)
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
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
