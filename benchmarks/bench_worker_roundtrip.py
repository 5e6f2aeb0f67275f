"""Round-trip overhead of the compute worker for one image, with the "echo" job.

``WorkerPool().run("echo", {"image": img})`` sends the image to the (already started and
warmed) worker process and gets it back. Compared against an in-process ``img.copy()``.

What one round trip does (see napari_cnnvision/worker/{client,server,transport}.py):
  send     client: transport.dumps -> new shared-memory block + copy of the image
  worker   pipe message; worker maps the block, runs echo (which also computes a float64
           checksum of the image), pickles the result: the returned image is copied into
           a second new shared-memory block; pipe message back
  receive  client: transport.loads(copy=True) -> copy out of the block + unlink it
  release  client: unlink/close the input block

"send" and "receive" are timed inside the client (the transport functions are wrapped
in this process only); "worker" is the rest of the wall time. The checksum echo computes
is job work, not transport, so its in-process time is shown too and subtracted in
"round trip - checksum". Two in-process references: ``img.copy()`` (malloc may hand back
warm pages, so it is close to a bare memcpy) and a copy into freshly mapped pages (page
faults included, as with each new shared-memory block).

    .venv/bin/python benchmarks/bench_worker_roundtrip.py [--repeats 30] [--sizes 2048 4096]
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import machine_note, median, quantile  # noqa: E402

GOAL_MS = 50.0  # for 2048 x 2048


class Timed:
    """Wraps the client's ``transport.dumps/loads/release`` to time them in this process."""

    def __init__(self, transport):
        self.transport = transport
        self.t = {"send": 0.0, "receive": 0.0, "release": 0.0}
        self._orig = {n: getattr(transport, n) for n in ("dumps", "loads", "release")}
        for name, key in (("dumps", "send"), ("loads", "receive"), ("release", "release")):
            setattr(transport, name, self._wrap(self._orig[name], key))

    def _wrap(self, func, key):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return func(*a, **k)
            finally:
                self.t[key] += time.perf_counter() - t0
        return timed

    def reset(self):
        for k in self.t:
            self.t[k] = 0.0

    def restore(self):
        for n, f in self._orig.items():
            setattr(self.transport, n, f)


def timeit(func, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func()
        out.append(time.perf_counter() - t0)
    return out


def copy_to_fresh_pages(img):
    """Copy into never-touched anonymous memory: page faults included, as with a new shm block."""
    buf = mmap.mmap(-1, img.nbytes)
    out = np.ndarray(img.shape, img.dtype, buffer=buf)
    out[...] = img
    del out
    buf.close()


def fmt(xs):
    return f"median {median(xs) * 1e3:8.1f} ms   p90 {quantile(xs, 0.9) * 1e3:8.1f} ms   min {min(xs) * 1e3:8.1f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed round trips per size (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed round trips per size first (default 3)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="square image sides (default 2048 4096)")
    args = ap.parse_args(argv)

    from napari_cnnvision.worker import WorkerPool, transport
    from napari_cnnvision.worker.builtin_jobs import echo
    from napari_cnnvision.core.progress import NULL_PROGRESS

    print("== compute worker round trip (echo job, uint16 image) ==")
    print(f"machine: {machine_note()}")
    pool = WorkerPool()
    t0 = time.perf_counter()
    pool.run("echo", {"x": 1})
    print(f"worker start + first job: {(time.perf_counter() - t0) * 1e3:.0f} ms (not included below)")
    t0 = time.perf_counter()
    pool.run("echo", {"x": 1})
    print(f"tiny job (no arrays), warm: {(time.perf_counter() - t0) * 1e3:.1f} ms")
    rng = np.random.default_rng(0)
    status = 0
    timer = Timed(transport)
    try:
        for side in args.sizes:
            img = rng.integers(0, 65535, size=(side, side), dtype=np.uint16)
            res = pool.run("echo", {"image": img})
            if not (np.array_equal(res["args"]["image"], img) and res["sums"]["image"] == float(img.sum(dtype=np.float64))):
                print(f"ERROR: {side}x{side} image came back different")
                status = 1
            for _ in range(args.warmup):
                pool.run("echo", {"image": img})
            total, send, recv, rel = [], [], [], []
            for _ in range(args.repeats):
                timer.reset()
                t0 = time.perf_counter()
                pool.run("echo", {"image": img})
                total.append(time.perf_counter() - t0)
                send.append(timer.t["send"])
                recv.append(timer.t["receive"])
                rel.append(timer.t["release"])
            worker = [t - s - r - x for t, s, r, x in zip(total, send, recv, rel)]
            copy = timeit(img.copy, args.repeats)
            fresh = timeit(lambda: copy_to_fresh_pages(img), args.repeats)
            checksum = timeit(lambda: echo(NULL_PROGRESS, image=img), args.repeats)
            net = [t - median(checksum) for t in total]

            print(f"\n{side}x{side} uint16 ({img.nbytes / 2**20:.0f} MiB), n={args.repeats}")
            for label, xs in (("round trip", total), ("  send (client)", send), ("  worker + pipes", worker),
                              ("  receive (client)", recv), ("  release input (client)", rel),
                              ("echo's checksum, in-process", checksum), ("round trip - checksum", net),
                              ("in-process img.copy()", copy), ("in-process copy, fresh pages", fresh)):
                print(f"  {label:<30}{fmt(xs)}")
            print(f"  {'round trip / img.copy()':<30}{median(total) / median(copy):6.1f}x   "
                  f"(+{(median(total) - median(copy)) * 1e3:.1f} ms)")
            print(f"  {'round trip / fresh-page copy':<30}{median(total) / median(fresh):6.1f}x   "
                  f"(+{(median(total) - median(fresh)) * 1e3:.1f} ms)")
            if side == 2048:
                verdict = "PASS" if median(total) * 1e3 < GOAL_MS else "FAIL"
                print(f"  goal: median round trip < {GOAL_MS:.0f} ms for 2048x2048 -> {verdict}")
    finally:
        timer.restore()
        pool.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
