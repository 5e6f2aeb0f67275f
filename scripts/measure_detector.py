"""Measure a trained detector folder on a VOC split and (with ``--write``) record it in its card.

COCO mAP@0.5, mAP@[.5:.95] and per-class AP@0.5 by pycocotools (``backends/detection/evaluate.py``)
on the network's detections at a score threshold of 0.001 (whole 640x480 images, no tiling);
the median latency of one image (tensor conversion + network + decoding + NMS, warm, after 3
warm-up runs) with ``--threads`` PyTorch threads; and the score threshold with the best F1
(IoU 0.5, all classes together) on that split, written to ``thresholds.json`` as the default.

    python scripts/measure_detector.py runs-det/bloodcells-yolo --write
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SCORE_GRID = tuple(round(0.05 * i, 2) for i in range(2, 17))  # 0.1 .. 0.8


def forward_flops(model, x) -> float:
    """Floating-point operations of one eval forward (PyTorch's FLOP counter: convolutions and
    matrix products, 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([x])
    return float(counter.get_total_flops())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a detector model folder")
    p.add_argument("--data", default="../shared/data/bccd")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="write the figures into the card and thresholds.json")
    p.add_argument("--hardware", default=None, help="replace the card's training hardware with this text")
    p.add_argument("--note", default="", help="recorded with the latency (e.g. what else ran on the CPU)")
    a = p.parse_args(argv)

    import torch

    from napari_cnnvision.backends.detection.data import load_split
    from napari_cnnvision.backends.detection.evaluate import coco_map, precision_recall
    from napari_cnnvision.backends.detection.models import load_detector, set_thresholds
    from napari_cnnvision.core.io import atomic_write_text
    from napari_cnnvision.core.registry import read_card, write_card

    torch.set_num_threads(a.threads)
    model, cfg = load_detector(a.model)
    classes = cfg["classes"]
    split = load_split(a.data, a.split, classes=classes)
    set_thresholds(model, 0.001, cfg["nms_thresh"])
    preds, times, cpu = [], [], []
    with torch.no_grad():
        first = split.samples[0].image
        for _ in range(3):
            model([torch.from_numpy(first.transpose(2, 0, 1).astype(np.float32) / 255)])
        for s in split.samples:
            t, c = time.perf_counter(), time.process_time()
            x = torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))).float() / 255
            d = model([x])[0]
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            xyxy = d["boxes"].numpy()
            preds.append((xyxy[:, [1, 0, 3, 2]], d["labels"].numpy() - 1, d["scores"].numpy()))
    truths = split.truths()
    shapes = [s.image.shape[:2] for s in split.samples]
    m = coco_map(preds, truths, classes, max_dets=100, shapes=shapes)
    f1s = {t: precision_recall(preds, truths, classes, t)["all"]["f1"] for t in SCORE_GRID}
    best_t = max(f1s, key=lambda t: (f1s[t], -abs(t - 0.5)))
    pr = precision_recall(preds, truths, classes, best_t)
    lat = statistics.median(times) * 1000
    cpu_ms = statistics.median(cpu) * 1000
    flops = forward_flops(model, torch.from_numpy(first.transpose(2, 0, 1).astype(np.float32) / 255))
    figures = {
        "map@0.5": round(m["map50"], 4), "map@[.5:.95]": round(m["map"], 4),
        "ap@0.5_per_class": {k: round(v, 4) for k, v in m["ap50"].items()},
        "n_images": m["n_images"], "n_truth": m["n_truth"],
        "method": "pycocotools COCOeval (scripts/measure_detector.py), score threshold 0.001, whole images",
        "score_thresh": best_t, "f1@score_thresh": round(pr["all"]["f1"], 4),
        "precision@score_thresh": round(pr["all"]["precision"], 4),
        "recall@score_thresh": round(pr["all"]["recall"], 4),
        "latency_ms_median": round(lat, 1),
        "cpu_ms_median": round(cpu_ms, 1),
        "gflop_per_image": round(flops / 1e9, 3),
        "gflops_per_cpu_second": round(flops / 1e9 / max(cpu_ms / 1000, 1e-9), 1),
        "latency": f"one {shapes[0][1]}x{shapes[0][0]} image, {a.threads} PyTorch thread(s); cpu_ms is the "
                   "process CPU time (wall time minus waiting for a busy CPU)" + (
            f", {a.note}" if a.note else ""),
    }
    print(json.dumps({a.split: figures}, indent=1))
    if a.write:
        folder = Path(a.model)
        card = read_card(folder)
        old = card.metrics.get(a.split, {})
        chosen_by = {k: old[k] for k in ("map@0.5", "ap@0.5", "ap@0.5_per_class", "ap_method") if k in old}
        card.metrics[a.split] = {**figures, "during_training": chosen_by}
        if a.hardware:
            card.training["hardware"] = a.hardware
        write_card(card, folder)
        atomic_write_text(folder / "thresholds.json",
                          json.dumps({"score": best_t, "nms": cfg["nms_thresh"],
                                      "chosen_on": f"{a.split} split, best F1 at IoU 0.5"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
