"""Detection figures: latency per 640x480 image, forward GFLOP/s, BCCD val mAP@0.5, a tiled 4096² run.

    python benchmarks/bench_detection.py [--model NAME|PATH ...] [--repeats 20] [--threads 2]
                                         [--no-map] [--no-tiled] [--worker] [--json]

For each model (default: the shipped detectors; without any, untrained YOLO-style and Faster
R-CNN MobileNetV3 networks of the recipes' shapes, for the speed figures only):

1. **latency**: median time of ``detect()`` per 640x480 BCCD val image, warm, in this process
   (the raw-box cache is cleared, so the network runs every time); with ``--worker`` also the
   round trip through the compute worker (shared-memory transfer included);
2. **forward GFLOP/s**: the network's forward FLOPs on one 640x480 image
   (``torch.utils.flop_counter``) over the median network time;
3. **accuracy** (trained models): COCO mAP@0.5, mAP@[.5:.95] and per-class AP@0.5 on BCCD val
   (pycocotools; detections at score >= 0.01), plus precision / recall at the model's own score
   threshold;
4. **tiled 4096x4096** (a mosaic of val images): time, number of tiles, boxes, and the peak RSS
   of a fresh process beside that of a fresh process detecting on one 640x480 image.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bccd"

RSS_CODE = r"""
import json, resource, sys, time, numpy as np
from napari_cnnvision.backends.detection.predict import detect
from napari_cnnvision.core.registry import read_card, ModelRegistry
from napari_cnnvision.core.images import read_image
import torch
if int(sys.argv[4]):
    torch.set_num_threads(int(sys.argv[4]))
card = ModelRegistry().get(sys.argv[1])
side = int(sys.argv[2])
names = [l.strip() for l in open(sys.argv[3] + "/splits/val.txt") if l.strip()]
tiles = [read_image(f"{sys.argv[3]}/images/{n}.jpg") for n in names[:64]]
if side <= 640:
    img = tiles[0]
else:
    rows = -(-side // 480); cols = -(-side // 640)
    img = np.concatenate([np.concatenate([tiles[(r * cols + c) % len(tiles)] for c in range(cols)], 1)
                          for r in range(rows)], 0)[:side, :side]
    img = np.ascontiguousarray(img)
del tiles
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
t = time.perf_counter()
res = detect(img, card)
dt = time.perf_counter() - t
print(json.dumps({"shape": list(img.shape), "boxes": res.n_objects, "seconds": dt, "counts": res.counts(),
                  "rss_before_mb": rss0, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}))
"""


def _untrained(tmp: Path) -> list[str]:
    """Model folders of the recipes' shapes with random weights (speed figures only)."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, save_detector

    classes = ["RBC", "WBC", "Platelets"]
    cfgs = {"untrained-yolo": {"arch": "yolo", "classes": classes, "input_size": 640, "scale": 0.5,
                               "widths": [16, 32, 64, 96, 128], "depths": [0, 1, 1, 1, 1], "stride": 8,
                               "head_channels": 64},
            "untrained-frcnn": {"arch": "fasterrcnn_mobilenet_v3_large_fpn", "classes": classes, "input_size": 640}}
    out = []
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        out.append(str(save_detector(build_detector(cfg), cfg, tmp / name, {"description": "untrained"})))
    return out


def _forward_flops(det, h=480, w=640) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(det.in_channels, h, w)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        det.model([x])
    return float(fc.get_total_flops())


def bench_model(model: str, a, val) -> dict:
    import torch

    from napari_cnnvision.backends.detection import predict as P
    from napari_cnnvision.backends.detection.evaluate import coco_map, precision_recall
    from napari_cnnvision.core.registry import ModelRegistry

    card = ModelRegistry().get(model)
    det = P.load(card)
    images = [img for img, _, _ in val] if val is not None else [
        (np.random.default_rng(k).random((480, 640, 3)) * 255).astype(np.uint8) for k in range(a.repeats)]
    out = {"model": card.name, "backend": card.backend, "threads": torch.get_num_threads(),
           "trained": "untrained" not in (card.description or "")}
    for im in images[:2]:  # warm
        P._RAW.clear()
        P.detect(im, card)
    lat, net = [], []
    for k in range(a.repeats):
        P._RAW.clear()
        t0 = time.perf_counter()
        r = P.detect(images[k % len(images)], card)
        lat.append(time.perf_counter() - t0)
        net.append(r.timings.get("network_s", 0.0))
    out["ms_per_image"] = 1e3 * float(np.median(lat))
    out["network_ms_per_image"] = 1e3 * float(np.median(net))
    flops = _forward_flops(det)
    out["forward_gflop"] = flops / 1e9
    out["achieved_gflops"] = flops / 1e9 / float(np.median(net))
    if a.worker:
        from napari_cnnvision.backends.dispatch import run_model
        from napari_cnnvision.worker import WorkerPool

        pool = WorkerPool()
        try:
            for im in images[:2]:
                run_model(im, card, pool=pool, task="detect")
            wl = []
            for k in range(a.repeats):  # a new image each time: the worker's cache cannot answer
                im = np.ascontiguousarray(np.roll(images[k % len(images)], 1 + k, axis=1))
                t0 = time.perf_counter()
                run_model(im, card, pool=pool, task="detect")
                wl.append(time.perf_counter() - t0)
            out["worker_ms_per_image"] = 1e3 * float(np.median(wl))
        finally:
            pool.shutdown()
    if val is not None and out["trained"] and not a.no_map:
        preds = []
        t0 = time.perf_counter()
        for im, _, _ in val:
            preds.append(P.detect(im, card, score_thresh=0.01))
        out["map_seconds"] = time.perf_counter() - t0
        names = list(det.classes)
        missing = [c for c in val.classes if c not in names]
        if missing:
            raise SystemExit(f"{card.name}: the model has no classes {missing} of the val split")
        remap = np.array([names.index(c) for c in val.classes], np.int64)  # in the model's class order
        truths = [(b, remap[c]) for _, b, c in val]
        m = coco_map(preds, truths, names)
        out.update({"map50": m["map50"], "map": m["map"], "ap50": m["ap50"]})
        thr = det.thresholds.get("score", 0.5)
        pr = precision_recall(preds, truths, names, score_thresh=thr)
        out["at_model_threshold"] = {"score_thresh": thr, **{k: pr["all"][k] for k in ("precision", "recall", "f1")}}
    if not a.no_tiled:
        for side in (640, a.tiled_size):
            r = subprocess.run([sys.executable, "-c", RSS_CODE, model, str(side), str(DATA), str(a.threads or 0)],
                               capture_output=True, text=True, timeout=3600)
            if r.returncode:
                raise RuntimeError(r.stderr[-2000:])
            out[f"fresh_process_{side}"] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="registry name or model folder (repeatable)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    p.add_argument("--tiled-size", type=int, default=4096)
    p.add_argument("--no-map", action="store_true")
    p.add_argument("--no-tiled", action="store_true")
    p.add_argument("--worker", action="store_true", help="also time the round trip through the compute worker")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from napari_cnnvision.core.registry import ModelRegistry

    if a.threads:
        torch.set_num_threads(a.threads)
    val = None
    if DATA.is_dir():
        from napari_cnnvision.backends.detection.data import load_split

        val = load_split(DATA, "val", classes=["RBC", "WBC", "Platelets"])
    tmp = tempfile.TemporaryDirectory()
    models = a.model or [c.name for c in ModelRegistry().list("detect") if c.source == "shipped"]
    if not models:
        print("no shipped detector: timing untrained networks of the recipes' shapes (no accuracy figures)")
        models = _untrained(Path(tmp.name))
    results = [bench_model(m, a, val) for m in models]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['model']} ({r['backend']}, {r['threads']} threads{'' if r['trained'] else ', untrained'})")
        print(f"  {r['ms_per_image']:.1f} ms per 640x480 image (median, warm; network {r['network_ms_per_image']:.1f} ms)"
              + (f"; through the worker {r['worker_ms_per_image']:.1f} ms" if "worker_ms_per_image" in r else ""))
        print(f"  forward {r['forward_gflop']:.2f} GFLOP per image -> {r['achieved_gflops']:.1f} GFLOP/s")
        if "map50" in r:
            ap = "  ".join(f"{k} {v:.3f}" for k, v in r["ap50"].items())
            t = r["at_model_threshold"]
            print(f"  BCCD val mAP@0.5 {r['map50']:.3f}  mAP@[.5:.95] {r['map']:.3f}  AP@0.5: {ap}")
            print(f"  at score >= {t['score_thresh']:.2f}: precision {t['precision']:.3f} recall {t['recall']:.3f} "
                  f"F1 {t['f1']:.3f}")
        big = r.get(f"fresh_process_{a.tiled_size}")
        small = r.get("fresh_process_640")
        if big:
            print(f"  {a.tiled_size}x{a.tiled_size} tiled: {big['seconds']:.1f} s, {big['boxes']} boxes, peak RSS "
                  f"{big['max_rss_mb']:.0f} MB (640x480 in a fresh process: {small['max_rss_mb']:.0f} MB)")
    if len(results) > 1:
        fast = min(results, key=lambda r: r["ms_per_image"])
        for r in results:
            if r is not fast:
                print(f"{fast['model']} is {r['ms_per_image'] / fast['ms_per_image']:.1f}x faster than {r['model']}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
