"""StarDist path figures: overhead vs a direct stardist call, 4096² peak memory, threshold-change latency.

    python benchmarks/bench_stardist.py [--model nuclei-stardist|PATH] [--repeats 5]

1. ratio of our path (compute worker, shared-memory transfer and table included) to a direct
   ``StarDist2D.predict_instances`` call on the same model and image, interleaved in one run (who
   goes first alternates); every repeat uses a new image, so the worker's cache cannot help;
2. peak memory (max RSS of a fresh process) segmenting a 4096x4096 image with automatic tiling;
3. time for a threshold change on a 1024x1024 image (only non-maximum suppression re-runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

MEM_CODE = r"""
import json, resource, sys, time, numpy as np
from napari_cnnvision import api
from napari_cnnvision.sample_data import load_sample
img = np.tile(load_sample("nuclei_2d"), (8, 8))
t = time.perf_counter()
res = api.segment(img, sys.argv[1])
dt = time.perf_counter() - t
print(json.dumps({"shape": list(img.shape), "objects": res.n_objects, "seconds": dt,
                  "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nuclei-stardist")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=1024, help="image size for the ratio and threshold figures")
    a = p.parse_args(argv)

    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.normalize import percentile_normalize
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.sample_data import load_sample
    from napari_cnnvision.worker import WorkerPool

    card = ModelRegistry().get(a.model)
    base = np.tile(load_sample("nuclei_2d"), (a.size // 512 + 1, a.size // 512 + 1))
    images = [np.roll(base, 7 * k, axis=1)[: a.size, : a.size] for k in range(2 * a.repeats + 2)]

    pool = WorkerPool()
    pool.run("stardist.predict", {"image": images[-1], "model": card_payload(card)})  # warm: load the model

    # direct stardist in this process (no Qt here); torchvision is never imported in this script
    from napari_cnnvision.backends.stardist.predict import load_model

    model = load_model(card)
    model.predict_instances(percentile_normalize(images[-2], 1, 99.8), n_tiles=None, show_tile_progress=False)
    ours, direct = [], []
    for k in range(a.repeats):
        img = images[k]  # the same image on both sides; new to the worker, so its cache cannot help
        for side in ((0, 1) if k % 2 == 0 else (1, 0)):  # alternate who goes first
            t = time.perf_counter()
            if side == 0:
                pool.run("stardist.predict", {"image": img, "model": card_payload(card), "n_tiles": None})
                ours.append(time.perf_counter() - t)
            else:
                model.predict_instances(percentile_normalize(img, 1, 99.8), n_tiles=None, show_tile_progress=False)
                direct.append(time.perf_counter() - t)
    mo, md = statistics.median(ours), statistics.median(direct)
    paired = statistics.median(o / d for o, d in zip(ours, direct))
    print(f"[ratio] {a.size}x{a.size}, model {card.name}, {a.repeats} interleaved repeats (same image, order alternating)")
    print(f"  ours (worker, transfer + table included): median {mo * 1000:.0f} ms  {[round(x * 1000) for x in ours]}")
    print(f"  direct StarDist2D.predict_instances:      median {md * 1000:.0f} ms  {[round(x * 1000) for x in direct]}")
    print(f"  median of the paired ratios: {paired:.3f}")
    print(f"  ratio ours/direct: {mo / md:.3f}  (target <= 1.05)")

    img = images[0]
    pool.run("stardist.predict", {"image": img, "model": card_payload(card), "prob_thresh": 0.5})
    changes = []
    for thr in (0.3, 0.4, 0.6, 0.7, 0.45):
        t = time.perf_counter()
        pool.run("stardist.predict", {"image": img, "model": card_payload(card), "prob_thresh": thr})
        changes.append(time.perf_counter() - t)
    print(f"[threshold change] {a.size}x{a.size}: median {statistics.median(changes) * 1000:.0f} ms, "
          f"max {max(changes) * 1000:.0f} ms  (target < 1000 ms)")
    pool.shutdown()

    out = subprocess.run([sys.executable, "-c", MEM_CODE, a.model], capture_output=True, text=True)
    if out.returncode != 0:
        print("[memory] failed:", out.stderr[-2000:])
        return 1
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[memory] 4096x4096 with automatic tiling: {m['objects']} objects in {m['seconds']:.1f} s, "
          f"peak RSS {m['max_rss_gb']:.2f} GB  (target < 4 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
