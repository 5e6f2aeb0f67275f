"""Re-optimize a packaged StarDist model's thresholds for the plugin's post-processing (weights unchanged).

    python scripts/rethreshold_stardist.py [--model src/napari_cnnvision/models/nuclei-stardist]
                                           [--data ../shared/data/dsb2018_fluo]

For when the post-processing changes but the network does not (e.g. object centres at the image
edge are kept since StarDist's default border of 2 grid steps was dropped):

1. runs the network once per val image and searches probability / NMS thresholds for the best val
   AP@0.5 of exactly what the plugin does (``napari_cnnvision.backends.stardist.thresholds``);
2. segments the val split through the plugin's own backend with the new thresholds, without and
   with test-time augmentation (``tta``; same thresholds), and scores it;
3. rewrites ``thresholds.json`` and the model card's thresholds and val metrics, and records the
   step in the card (``training.postprocessing``). Files are replaced atomically.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from napari_cnnvision.backends.evaluate import score_segmentations
from napari_cnnvision.backends.stardist.predict import load_model, segment
from napari_cnnvision.backends.stardist.thresholds import optimize_thresholds
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.io import atomic_write_text
from napari_cnnvision.core.registry import read_card, write_card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="src/napari_cnnvision/models/nuclei-stardist")
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--dry-run", action="store_true", help="print the figures, change no file")
    a = p.parse_args(argv)

    folder = Path(a.model)
    card = read_card(folder, "path")
    model = load_model(card)
    val = load_segmentation_split(a.data, "val")
    old = json.loads((folder / "thresholds.json").read_text())
    t = time.time()
    best = optimize_thresholds(model, val.images, val.masks)
    print(f"thresholds {old} -> {best} ({time.time() - t:.0f} s)", flush=True)
    metrics = {}
    for key, tta in (("val", False), ("val_tta", True)):
        t = time.time()
        preds = [segment(x, card, prob_thresh=best["prob"], nms_thresh=best["nms"], tta=tta).labels
                 for x in val.images]
        seconds = time.time() - t
        scores = score_segmentations(val.masks, preds)
        metrics[key] = scores.card_metrics(seconds)
        print(f"{key}: " + " ".join(f"AP@{s:.1f} {v:.4f}" for s, v in zip(scores.iou, scores.ap))
              + f"  ({1000 * seconds / len(preds):.0f} ms/image)", flush=True)
    if a.dry_run:
        return 0
    thresholds = {"prob": best["prob"], "nms": best["nms"]}
    d = card.to_json()
    training = dict(d.get("training") or {})
    steps = list(training.get("postprocessing") or [])
    steps.append({"command": "python scripts/rethreshold_stardist.py",
                  "change": "object centres at the image edge are kept (NMS border 0; StarDist's default is 2)",
                  "thresholds_before": old, "val_ap@0.5_before": (card.metrics.get("val") or {}).get("ap@0.5"),
                  "thresholds": thresholds, "optimized_for": "val AP@0.5 of the plugin's post-processing"})
    training["postprocessing"] = steps
    if "rethreshold_stardist.py" not in training.get("command", ""):
        training["command"] = training.get("command", "") + " && python scripts/rethreshold_stardist.py"
    training["thresholds"] = thresholds
    card.training = training
    card.metrics = {**card.metrics, **metrics}
    atomic_write_text(folder / "thresholds.json", json.dumps(thresholds))
    write_card(card, folder)
    print(f"wrote {folder}: val AP@0.5 {metrics['val']['ap@0.5']} (with tta {metrics['val_tta']['ap@0.5']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
