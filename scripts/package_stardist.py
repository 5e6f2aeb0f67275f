"""Finish a trained StarDist run and ship it: thresholds, val metrics, model card, copy into the package.

    python scripts/package_stardist.py --run runs/nuclei-stardist --data ../shared/data/dsb2018_fluo

1. loads the run's best weights (``weights_best.h5``, chosen on val loss during training);
2. optimizes the probability/NMS thresholds on the val split (unless ``--keep-thresholds``);
3. segments every val image through the plugin's own backend and scores it (AP = TP/(TP+FP+FN));
4. writes ``config.json``, ``weights_best.h5``, ``thresholds.json`` and a ``model.json`` card to ``--dest``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from napari_cnnvision.backends.evaluate import score_segmentations
from napari_cnnvision.backends.stardist.predict import load_model, segment
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.normalize import percentile_normalize
from napari_cnnvision.core.registry import ModelCard, read_card, write_card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/nuclei-stardist")
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--dest", default="src/napari_cnnvision/models/nuclei-stardist")
    p.add_argument("--name", default="nuclei-stardist")
    p.add_argument("--keep-thresholds", action="store_true")
    a = p.parse_args(argv)

    run = Path(a.run)
    val = load_segmentation_split(a.data, "val")
    card = read_card(run, "path")
    model = load_model(card)
    model.load_weights("weights_best.h5")
    if not a.keep_thresholds:
        t = time.time()
        Xv = [percentile_normalize(x, 1, 99.8) for x in val.images]
        thr = model.optimize_thresholds(Xv, val.masks)
        print(f"optimized thresholds {thr} in {time.time() - t:.0f} s", flush=True)
    t = time.time()
    preds = [segment(x, card).labels for x in val.images]
    seconds = time.time() - t
    scores = score_segmentations(val.masks, preds)
    for i in range(len(scores.iou)):
        print(f"val IoU {scores.iou[i]:.1f}: AP {scores.ap[i]:.3f} precision {scores.precision[i]:.3f} "
              f"recall {scores.recall[i]:.3f} F1 {scores.f1[i]:.3f}", flush=True)
    training = json.loads((run / "training.json").read_text()) if (run / "training.json").is_file() else {}
    log = run.parent / "train_stardist.log"
    epochs_done = None
    if log.is_file():
        import re

        text = log.read_text(errors="ignore")
        hits = re.findall(r"epoch (\d+)/\d+ epoch=\d+ seconds=([\d.]+)", text)
        if hits:
            epochs_done, train_seconds = int(hits[-1][0]), float(hits[-1][1])
            training.setdefault("seconds", train_seconds)
        losses = re.findall(r"epoch (\d+)/\d+ epoch=\d+ .*? val_loss=([\d.]+)", text)
        if losses:
            training["best_epoch"] = int(min(losses, key=lambda e: float(e[1]))[0])
    thresholds = json.loads((run / "thresholds.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    out_card = ModelCard(
        name=a.name, task="segment", backend="stardist2d", classes=["nucleus"], axes="YX", channels=1,
        normalization={"type": "percentile", "pmin": 1.0, "pmax": 99.8},
        description="StarDist 2D nuclei model for fluorescence images, trained on the DSB2018 fluorescence "
                    "train split by scripts/train_nuclei_stardist.py",
        training={
            "data": "dsb2018_fluo (BBBC038 / Kaggle DSB2018 stage 1, fluorescence subset): train split "
                    "(391 images) for training, val split (68 images) for weight and threshold selection",
            "command": "python scripts/train_nuclei_stardist.py --data ../shared/data/dsb2018_fluo --out runs "
                       f"--epochs {cfg.get('train_epochs')} && python scripts/package_stardist.py",
            "epochs_run": epochs_done, "best_epoch (lowest val loss; these weights)": training.get("best_epoch"),
            "steps_per_epoch": cfg.get("train_steps_per_epoch"),
            "seconds": training.get("seconds"), "hardware": "2 CPU cores",
            "config": {k: cfg[k] for k in ("n_rays", "grid", "train_patch_size", "train_batch_size",
                                           "unet_n_depth", "unet_n_filter_base", "train_learning_rate")},
            "thresholds": thresholds,
        },
        metrics={"val": {f"ap@{s:.1f}": round(v, 4) for s, v in zip(scores.iou, scores.ap)} | {
            f"f1@{s:.1f}": round(v, 4) for s, v in zip(scores.iou, scores.f1)} | {
            "n_images": scores.n_images, "predict_seconds": round(seconds, 1)}},
    )
    dest = Path(a.dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None, prefix=".pkg-"))
    for f in ("config.json", "weights_best.h5", "thresholds.json"):
        shutil.copy2(run / f, tmp / f)
    write_card(out_card, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    print(f"wrote {dest}: val AP@0.5 {scores.at(0.5)['ap']:.3f}")


if __name__ == "__main__":
    main()
