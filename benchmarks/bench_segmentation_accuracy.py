"""Accuracy of segmentation models on a dataset split (default: dsb2018_fluo val).

    python benchmarks/bench_segmentation_accuracy.py [--models nuclei-stardist nuclei-unet] [--split val]

Segments every image of the split through the plugin's Python API (the same backend as the
widget and the CLI) and prints precision, recall, F1 and AP = TP/(TP+FP+FN) at IoU 0.5..0.9.
Skips (exit 0) when the shared data folder is missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018_fluo"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["nuclei-stardist", "nuclei-unet"])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        print(f"skipped: no dataset at {a.data}")
        return 0

    from napari_cnnvision import api
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.core.datasets import load_segmentation_split
    from napari_cnnvision.core.registry import ModelNotFound, ModelRegistry

    data = load_segmentation_split(a.data, a.split, a.limit)
    reg = ModelRegistry()
    for name in a.models:
        try:
            card = reg.get(name)
        except ModelNotFound as exc:
            print(f"{name}: {exc}")
            continue
        t = time.perf_counter()
        preds = [api.segment(x, card).labels for x in data.images]
        dt = time.perf_counter() - t
        s = score_segmentations(data.masks, preds)
        print(f"{name} on {Path(a.data).name}/{a.split} ({s.n_images} images, {dt:.0f} s, "
              f"{1000 * dt / s.n_images:.0f} ms/image)")
        print(f"  {'IoU':>5} {'AP':>6} {'prec':>6} {'recall':>6} {'F1':>6}")
        for i in range(len(s.iou)):
            print(f"  {s.iou[i]:5.2f} {s.ap[i]:6.3f} {s.precision[i]:6.3f} {s.recall[i]:6.3f} {s.f1[i]:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
