"""Accuracy, latency and GFLOP/s of a localizer on the BCCD WBC subtype val split.

Runs the model through the same ``localize()`` the plugin, the CLI and the API use, on the
full-size val images (640x480 RGB), and prints class accuracy, per-class and balanced accuracy,
mean box IoU and the fraction of boxes with IoU >= 0.5 / 0.75, the median time per image (warm,
in this process) and the network's forward FLOPs and achieved GFLOP/s.

Beside ``localize()`` it times, image by image in the same loop, the plain path it replaced
(``reference_input``: the whole image to float and ``numpy.percentile`` twice, then one batch-1
network call per frame) and a batch-1 forward pass alone, on single images and on a 10-frame stack,
and prints the largest differences between the two paths' boxes and probabilities.

    python benchmarks/bench_wbc_localizer.py [--model wbc-localizer] [--threads 2] [--tta] [--json] [--no-plain]
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
    p.add_argument("--no-plain", action="store_true", help="skip the plain-path comparison")
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
    plain = None if a.no_plain else compare_plain(images, card, loaded, boxes, localize)
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
           "achieved_gflops": flops / 1e9 / fwd, "threads": torch.get_num_threads(), "plain_path": plain}
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
    if plain:
        print(f"  same loop, medians: localize() {plain['localize_ms']:.1f} ms, plain path {plain['plain_ms']:.1f} ms, "
              f"batch-1 forward alone {plain['forward_b1_ms']:.1f} ms per image")
        print(f"  10-frame stack: localize() {plain['stack_localize_ms']:.0f} ms, plain path "
              f"{plain['stack_plain_ms']:.0f} ms, one batch-10 forward {plain['stack_forward_ms']:.0f} ms")
        print(f"  localize() vs plain path: same classes {plain['same_classes']}, boxes within "
              f"{plain['max_box_diff_px']:.2g} px, probabilities within {plain['max_prob_diff']:.2g}")
    return 0


def compare_plain(images, card, loaded, boxes, localize):
    """Median ms of localize(), of the plain path it replaced and of a batch-1 forward, per image
    (interleaved, so that the machine's load hits all three alike) and on a 10-frame stack."""
    import torch

    from napari_cnnvision.backends.localizer.model import cxcywh_to_yxyx
    from napari_cnnvision.backends.localizer.predict import predict_inputs
    from napari_cnnvision.backends.localizer.preprocess import reference_input, to_input

    cfg = loaded.config
    norm = {k: v for k, v in card.normalization.items() if k != "source"}

    def plain_path(frames):
        out = []
        for im in frames:
            b, p = predict_inputs(loaded.model, reference_input(im, cfg.input_size, norm, cfg.in_channels)[None])
            h, w = im.shape[:2]
            out.append((np.clip(cxcywh_to_yxyx(b, h, w)[0], 0, [h, w, h, w]), p[0]))
        return out

    def timed(f):
        t0 = time.perf_counter()
        r = f()
        return r, 1000 * (time.perf_counter() - t0)

    t_loc, t_plain, t_fwd, dbox, dprob, same = [], [], [], 0.0, 0.0, True
    for im, b_loc in zip(images, boxes):
        res, t = timed(lambda: localize(im, card))
        t_loc.append(t)
        ((b, p),), t = timed(lambda: plain_path([im]))
        t_plain.append(t)
        x = torch.from_numpy(to_input(im, cfg.input_size, norm, cfg.in_channels)[None])
        with torch.inference_mode():
            t_fwd.append(timed(lambda: loaded.model(x))[1])
        dbox, dprob = max(dbox, float(np.abs(res.boxes[0] - b).max())), max(dprob, float(np.abs(
            res.probabilities[0] - p).max()))
        same &= int(res.class_ids[0]) == int(np.argmax(p))
    stack = np.stack(images[:10])
    s_loc, s_plain, s_fwd = [], [], []
    xs = torch.from_numpy(np.stack([to_input(im, cfg.input_size, norm, cfg.in_channels) for im in stack]))
    for _ in range(3):
        res, t = timed(lambda: localize(stack, card))
        s_loc.append(t)
        ref, t = timed(lambda: plain_path(stack))
        s_plain.append(t)
        with torch.inference_mode():
            s_fwd.append(timed(lambda: loaded.model(xs))[1])
        dbox = max(dbox, float(np.abs(res.boxes - np.array([r[0] for r in ref])).max()))
        dprob = max(dprob, float(np.abs(res.probabilities - np.array([r[1] for r in ref])).max()))
        same &= res.class_ids.tolist() == [int(np.argmax(r[1])) for r in ref]
    med = lambda v: float(np.median(v))  # noqa: E731
    return {"localize_ms": med(t_loc), "plain_ms": med(t_plain), "forward_b1_ms": med(t_fwd),
            "stack_localize_ms": med(s_loc), "stack_plain_ms": med(s_plain), "stack_forward_ms": med(s_fwd),
            "same_classes": bool(same), "max_box_diff_px": dbox, "max_prob_diff": dprob}


if __name__ == "__main__":
    sys.exit(main())
