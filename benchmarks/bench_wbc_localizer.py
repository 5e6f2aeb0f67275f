"""Accuracy, latency and GFLOP/s of a localizer on the BCCD WBC subtype val split.

Runs the model through the same ``localize()`` the plugin, the CLI and the API use, on the
full-size val images (640x480 RGB), and prints class accuracy, per-class and balanced accuracy,
mean box IoU and the fraction of boxes with IoU >= 0.5 / 0.75, the median time per image (warm,
in this process) and the network's forward FLOPs and achieved GFLOP/s.

    python benchmarks/bench_wbc_localizer.py [--model wbc-localizer] [--threads 2] [--tta] [--json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/bccd")
    p.add_argument("--split", default="val")
    p.add_argument("--model", default="wbc-localizer", help="registry name or model folder")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (the 4 mirror flips)")
    a = p.parse_args(argv)

    import torch

    from napari_cnnvision.backends.localizer.io import load_model
    from napari_cnnvision.backends.localizer.metrics import localization_scores
    from napari_cnnvision.backends.localizer.predict import localize
    from napari_cnnvision.core.images import read_image
    from napari_cnnvision.core.registry import ModelRegistry

    if a.threads:
        torch.set_num_threads(a.threads)
    card = ModelRegistry().get(a.model)
    data = Path(a.data)
    rows = list(csv.DictReader(open(data / "derived" / f"wbc_subtype_localization_{a.split}.csv")))
    names = card.classes
    images = [read_image(data / "images" / r["image"]) for r in rows]
    truth_boxes = np.array([[float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])] for r in rows])
    truth = np.array([names.index(r["subtype"]) for r in rows])
    localize(images[0], card)  # warm: model loaded and cached
    pred, boxes, times = [], [], []
    for im in images:
        t0 = time.perf_counter()
        res = localize(im, card, tta=a.tta)
        times.append(time.perf_counter() - t0)
        pred.append(int(res.class_ids[0]))
        boxes.append(res.boxes[0])
    sc = localization_scores(pred, truth, np.array(boxes), truth_boxes, names)

    loaded = load_model(card.path)
    h, w = loaded.config.input_size
    x = torch.zeros(1, loaded.config.in_channels, h, w)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            loaded.model(x)
        flops = fc.get_total_flops()
        xb = torch.zeros(16, loaded.config.in_channels, h, w)
        loaded.model(xb)
        t0 = time.perf_counter()
        n_rep = 5
        for _ in range(n_rep):
            loaded.model(xb)
        fwd = (time.perf_counter() - t0) / (n_rep * 16)
    out = {"model": card.name, "split": a.split, "tta": a.tta, "n_images": len(rows), **sc,
           "median_ms_per_image": 1000 * float(np.median(times)),
           "forward_gflop_per_image": flops / 1e9, "forward_ms_per_image_batch16": 1000 * fwd,
           "achieved_gflops": flops / 1e9 / fwd, "threads": torch.get_num_threads()}
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{card.name} on {a.split} ({len(rows)} images, {torch.get_num_threads()} threads"
          + (", TTA)" if a.tta else ")"))
    print(f"  accuracy {sc['accuracy']:.3f}  balanced accuracy {sc['balanced_accuracy']:.3f}")
    for c, v in sc["per_class_accuracy"].items():
        print(f"    {c:<11} {v:.3f}  (n={sc['per_class_n'][c]})")
    print(f"  box IoU: mean {sc['mean_iou']:.3f}, >= 0.5 {sc['iou_ge_0.5']:.3f}, >= 0.75 {sc['iou_ge_0.75']:.3f}")
    print(f"  {out['median_ms_per_image']:.1f} ms per image (median, warm, whole localize() incl. resize)")
    print(f"  forward {out['forward_gflop_per_image']:.3f} GFLOP per image, {out['forward_ms_per_image_batch16']:.2f} "
          f"ms per image at batch 16 -> {out['achieved_gflops']:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
