"""Recipe for the ``wbc-localizer`` model: the one white blood cell of a BCCD image and its subtype.

Trains the localizer (CNN backbone, class head with cross-entropy + box head with an L2 loss
on the normalized box, total CE + λ·L2) from scratch on
``bccd/derived/wbc_subtype_localization_train.csv`` and keeps the epoch with the best val score
(mean of accuracy, balanced accuracy and mean box IoU on ``..._val.csv``). The images are read
and downscaled once and kept in memory. Writes ``--out/checkpoints``, ``--out/history.json`` and
the model folder ``--out/<name>`` (config.json, weights.pt, model.json card, training.json).

    python scripts/train_wbc_localizer.py --out runs-loc/wbc --time-budget 3000 --threads 1

Quick smoke run: ``--epochs 2 --limit 16``. Stop early, keeping the best epoch: ``touch <out>/stop``
or SIGTERM.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = ["Neutrophil", "Eosinophil", "Lymphocyte", "Monocyte", "Basophil"]


def read_split(data: Path, split: str, limit: int | None = None):
    """(images, boxes (y0, x0, y1, x1), labels, names) of a subtype localization split."""
    from napari_cnnvision.core.images import read_image

    rows = list(csv.DictReader(open(data / "derived" / f"wbc_subtype_localization_{split}.csv")))
    rows = rows[:limit] if limit else rows
    images, boxes, labels, names = [], [], [], []
    for r in rows:
        images.append(read_image(data / "images" / r["image"]))
        boxes.append([float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])])
        labels.append(CLASSES.index(r["subtype"]))
        names.append(r["image"])
    return images, np.asarray(boxes), np.asarray(labels), names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/bccd")
    p.add_argument("--out", default="runs-loc/wbc")
    p.add_argument("--name", default="wbc-localizer")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--time-budget", type=float, default=None, help="seconds; the schedule ends there")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--box-weight", type=float, default=20.0, help="λ in CE + λ·L2")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    p.add_argument("--widths", type=int, nargs="+", default=(24, 32, 64, 96, 128, 192))
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turns", action="store_true",
                   help="augment with 90-degree turns too (off: the 640x480 images are squashed to a square "
                        "input, so a turned image shows cells of another aspect ratio, and the boxes learn an "
                        "average aspect)")
    p.add_argument("--init", default=None, help="start from these weights (a checkpoint .pt of an earlier run)")
    p.add_argument("--previous", default=None, help="the training.json / history of the run --init came from "
                                                     "(its stages are recorded in the card)")
    p.add_argument("--hardware", default="2 CPU cores (shared)")
    a = p.parse_args(argv)

    import torch

    from napari_cnnvision.backends.localizer.io import DEFAULT_NORMALIZATION, save_model
    from napari_cnnvision.backends.localizer.train import LocalizerTrainSettings, prepare_set, train_localizer
    from napari_cnnvision.core.progress import Progress

    torch.set_num_threads(a.threads)
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    settings = LocalizerTrainSettings.from_dict(dict(
        epochs=a.epochs, time_budget=a.time_budget, batch_size=a.batch, learning_rate=a.lr, box_weight=a.box_weight,
        input_size=tuple(a.size), widths=tuple(a.widths), seed=a.seed, augment={"turns": a.turns}))
    norm = dict(DEFAULT_NORMALIZATION)
    sets = {}
    for split in ("train", "val"):
        images, boxes, labels, names = read_split(data, split, a.limit)
        sets[split] = prepare_set(images, boxes, labels, settings.input_size, norm, names)
        counts = np.bincount(labels, minlength=len(CLASSES))
        print(f"{split}: {len(labels)} images, " + ", ".join(f"{c} {k}" for c, k in zip(CLASSES, counts)), flush=True)
    print(f"prepared in {time.monotonic() - t0:.1f} s", flush=True)

    def emit(ev):
        m = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.metrics.items())
        print(f"[{time.strftime('%H:%M:%S')}] {ev.message} {m}", flush=True)

    stop_file = out / "stop"
    stop_file.unlink(missing_ok=True)
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    init = None
    if a.init:
        from napari_cnnvision.backends.localizer.io import read_state_dict

        init = read_state_dict(a.init, f"the --init checkpoint {a.init}")
    res = train_localizer(sets["train"], sets["val"], CLASSES, settings, out_dir=out,
                          progress=Progress(emit, lambda: bool(term) or stop_file.exists()), init_state=init)
    command = "python scripts/train_wbc_localizer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    n_tr = np.bincount(sets["train"].labels, minlength=len(CLASSES))
    n_va = np.bincount(sets["val"].labels, minlength=len(CLASSES))
    training = {
        "data": (f"{a.data}/derived/wbc_subtype_localization_train.csv ({len(sets['train'])} images: "
                 + ", ".join(f"{c} {k}" for c, k in zip(CLASSES, n_tr))
                 + f"); val ..._val.csv ({len(sets['val'])} images: "
                 + ", ".join(f"{c} {k}" for c, k in zip(CLASSES, n_va)) + ") used only to choose the epoch"),
        "from_scratch": "trained from random weights (no pretrained weights are reachable here)",
        "command": command.strip(), "recipe": "scripts/train_wbc_localizer.py",
        "hardware": f"{a.hardware}, {a.threads} PyTorch thread(s), {platform.processor() or platform.machine()}",
        "training_seconds": round(res.seconds, 1), "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
        "box_weight_lambda": settings.box_weight,
        "loss": "class-weighted cross-entropy (label smoothing) + λ · MSE of the normalized (cx, cy, w, h)",
        "class_balance": (f"sampling weight count**-{settings.balance} per class, CE weight "
                          f"count**-{settings.class_weight_power} (counts below {settings.min_class_count} "
                          "raised to it)"),
        "selection": "epoch with the best mean of val accuracy, balanced accuracy and mean box IoU",
        "stopped_early": res.stopped, "settings": res.settings,
    }
    if a.init:
        stages = []
        if a.previous:
            prev = json.loads(Path(a.previous).read_text())
            stages = prev.get("stages") or [{k: prev.get(k) for k in ("command", "training_seconds", "epochs_run",
                                                                       "best_epoch", "settings")}]
        stage = {k: training[k] for k in ("command", "training_seconds", "epochs_run", "best_epoch", "settings")}
        training["stages"] = stages + [{**stage, "init": a.init}]
        training["training_seconds"] = round(sum(st.get("training_seconds") or 0 for st in training["stages"]), 1)
        training["epochs_run"] = sum(st.get("epochs_run") or 0 for st in training["stages"])
    m = res.metrics
    metrics = {"val_accuracy": m.get("accuracy"), "val_balanced_accuracy": m.get("balanced_accuracy"),
               "val_per_class_accuracy": m.get("per_class_accuracy"), "val_per_class_n": m.get("per_class_n"),
               "val_mean_iou": m.get("mean_iou"), "val_iou_ge_0.5": m.get("iou_ge_0.5"),
               "val_iou_ge_0.75": m.get("iou_ge_0.75"), "val_n_images": m.get("n"),
               "measured_on": "the val images as prepared for training (same preprocessing as inference)"}
    folder = save_model(out / a.name, res.model, res.config, CLASSES, name=a.name, normalization=norm,
                        description=("The one white blood cell of a BCCD blood-smear image (640x480 RGB) and its "
                                     "subtype: a compact CNN (trained from scratch) with a class head and a box head"),
                        training=training, metrics=metrics,
                        extra_files={"training.json": json.dumps({"history": res.history}, indent=1) + "\n"})
    print(json.dumps({"model_dir": str(folder), "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                      "seconds": round(res.seconds, 1), "metrics": metrics}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
