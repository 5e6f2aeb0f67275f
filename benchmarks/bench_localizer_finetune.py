"""Localizer fine-tuning on the user's own class set: the shipped ``wbc-localizer`` as the base
against a fresh network, on the same few images, through ``api.train("localize", ...)`` (the
Train widget's / ``train localize``'s path: the compute worker, the defaults but ``--epochs``).

The user's task differs from the base's: the white cell's **lineage**, ``granulocyte``
(Neutrophil, Eosinophil, Basophil) or ``agranulocyte`` (Lymphocyte, Monocyte) -- two class names
the base does not know, so its class head starts fresh for them; its backbone, attention and box
head are the base's. ``--n`` training images of the BCCD WBC subtype train split (evenly spread,
sorted ids), one box each; the model chooses its epoch on a held-out fifth of them, as the widget
does. Scored on the whole val split (``localize()``, as the plugin does): class accuracy, balanced
accuracy, mean box IoU and the share of boxes with IoU >= 0.5. "Before": the base itself, its
subtype probabilities summed per lineage.

(The base was trained on the train split's subtypes, so it has seen these images; what this
measures is how far its features carry to a task it was not trained for, with few labels.)

    .venv/bin/python benchmarks/bench_localizer_finetune.py [--n 24] [--epochs 30] [--base wbc-localizer]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import machine_note  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd"
LINEAGE = {"Neutrophil": "granulocyte", "Eosinophil": "granulocyte", "Basophil": "granulocyte",
           "Lymphocyte": "agranulocyte", "Monocyte": "agranulocyte"}
CLASSES = ["granulocyte", "agranulocyte"]


def _split(data: Path, split: str):
    from napari_cnnvision.core.images import read_image

    rows = list(csv.DictReader(open(data / "derived" / f"wbc_subtype_localization_{split}.csv")))
    images = [read_image(data / "images" / r["image"]) for r in rows]
    boxes = np.array([[float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])] for r in rows])
    return images, boxes, [LINEAGE[r["subtype"]] for r in rows]


def _score(api, card, images, boxes, truth, merge=None) -> dict:
    from napari_cnnvision.backends.localizer.metrics import localization_scores

    pred, pboxes = [], []
    for im in images:
        res = api.localize(im, card)
        p = res.probabilities[0]
        if merge is not None:  # the base: its subtype probabilities summed per lineage
            p = [sum(p[i] for i, c in enumerate(res.class_names) if merge[c] == k) for k in CLASSES]
            pred.append(int(np.argmax(p)))
        else:
            pred.append(CLASSES.index(res.classes[0]))
        pboxes.append(res.boxes[0])
    return localization_scores(pred, [CLASSES.index(t) for t in truth], np.array(pboxes), boxes, CLASSES)


def _line(label, sc, extra=""):
    print(f"{label}: accuracy {sc['accuracy']:.3f}, balanced {sc['balanced_accuracy']:.3f}, mean IoU "
          f"{sc['mean_iou']:.3f}, IoU>=0.5 {sc['iou_ge_0.5']:.3f}{extra}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--n", type=int, default=24, help="training images (evenly spread over the train split)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--base", default="wbc-localizer")
    a = p.parse_args(argv)
    if not (a.data / "derived").is_dir():
        print(f"skipped: no BCCD data at {a.data}")
        return 0
    with tempfile.TemporaryDirectory() as user:
        os.environ["NAPARI_CNNVISION_DATA_DIR"] = user  # models go to a temporary user folder
        from napari_cnnvision import api
        from napari_cnnvision.core.registry import ModelRegistry

        registry = ModelRegistry()
        tr_images, tr_boxes, tr_classes = _split(a.data, "train")
        va_images, va_boxes, va_truth = _split(a.data, "val")
        idx = sorted({int(round(v)) for v in np.linspace(0, len(tr_images) - 1, a.n)})
        stack = np.stack([tr_images[i] for i in idx])
        ann = {"boxes": tr_boxes[idx], "classes": [tr_classes[i] for i in idx], "frames": list(range(len(idx)))}
        counts = {c: ann["classes"].count(c) for c in CLASSES}
        print(f"== localizer fine-tuning on the lineage task ({machine_note()}) ==")
        print(f"train: {len(idx)} images {counts}; val: {len(va_images)} images "
              f"{ {c: va_truth.count(c) for c in CLASSES} }")
        base = registry.get(a.base)
        _line(f"before ({a.base}, subtypes summed per lineage)", _score(api, base, va_images, va_boxes, va_truth,
                                                                         LINEAGE))
        for label, b in (("fine-tuned from " + a.base, a.base), ("fresh network", None)):
            t0 = time.perf_counter()
            res = api.train("localize", stack, ann, base=b, name="lineage-" + ("ft" if b else "fresh"),
                            epochs=a.epochs, registry=registry)
            secs = time.perf_counter() - t0
            note = " (the base kept)" if res.kept_base else f", best epoch {res.best_epoch}"
            _line(f"after ({label})", _score(api, res.card, va_images, va_boxes, va_truth),
                  f"; {res.epochs_run} epochs{note}, {secs:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
