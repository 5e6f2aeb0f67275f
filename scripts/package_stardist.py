"""Finish a trained StarDist run and ship it: thresholds, val metrics, model card, copy into the package.

    python scripts/package_stardist.py --run runs/nuclei-stardist --data ../shared/data/dsb2018_fluo

1. for each candidate weights file of the run (default: ``weights_best.h5``, the lowest val loss
   during training, ``weights_last.h5`` and ``weights_now.h5``, the latest epoch's): optimizes the probability/NMS thresholds on the val
   split for val AP@0.5 of the plugin's own post-processing (unless ``--keep-thresholds``; see
   ``napari_cnnvision.backends.stardist.thresholds``), segments every val image through the plugin's
   own backend and scores it (AP = TP/(TP+FP+FN));
2. keeps the candidate with the highest val AP@0.5 (all choices are made on val, never on test);
3. writes ``config.json``, ``weights_best.h5`` (the chosen weights), ``thresholds.json`` and a
   ``model.json`` card to ``--dest``. With ``--previous-card`` (the card of the model this run was
   initialised from) the card lists every training stage and the total epochs and time.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from napari_cnnvision.backends.evaluate import score_segmentations
from napari_cnnvision.backends.stardist.predict import _RAW, load_model, segment
from napari_cnnvision.backends.stardist.thresholds import optimize_thresholds
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.io import atomic_write_text, staged_dir
from napari_cnnvision.core.registry import ModelCard, read_card, write_card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/nuclei-stardist")
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--dest", default="src/napari_cnnvision/models/nuclei-stardist")
    p.add_argument("--name", default="nuclei-stardist")
    p.add_argument("--keep-thresholds", action="store_true")
    p.add_argument("--candidates", nargs="+", default=["weights_best.h5", "weights_last.h5", "weights_now.h5"],
                   help="weights files of the run to compare on val")
    p.add_argument("--previous-card", default=None,
                   help="model.json of the model this run started from (--init), to record all stages")
    p.add_argument("--command", default=None, help="the training command of this run, for the card")
    p.add_argument("--hardware", default="2 CPU cores", help="what the run trained on, for the card")
    p.add_argument("--recipe", default="scripts/train_nuclei_stardist.py", help="the training script, for the card")
    a = p.parse_args(argv)

    run = Path(a.run)
    val = load_segmentation_split(a.data, "val")
    card = read_card(run, "path")
    model = load_model(card)
    results = []
    for cand in [c for c in a.candidates if (run / c).is_file()]:
        model.load_weights(cand)
        if not a.keep_thresholds:
            t = time.time()
            best = optimize_thresholds(model, val.images, val.masks)
            atomic_write_text(run / "thresholds.json", json.dumps({"prob": best["prob"], "nms": best["nms"]}))
            print(f"{cand}: optimized thresholds {best} in {time.time() - t:.0f} s", flush=True)
        thresholds = json.loads((run / "thresholds.json").read_text())
        _RAW.clear()  # the network output cache belongs to the previous weights
        t = time.time()
        preds = [segment(x, card, prob_thresh=thresholds["prob"], nms_thresh=thresholds["nms"]).labels
                 for x in val.images]
        seconds = time.time() - t
        scores = score_segmentations(val.masks, preds)
        for i in range(len(scores.iou)):
            print(f"{cand} val IoU {scores.iou[i]:.1f}: AP {scores.ap[i]:.3f} precision {scores.precision[i]:.3f} "
                  f"recall {scores.recall[i]:.3f} F1 {scores.f1[i]:.3f}", flush=True)
        results.append((scores.at(0.5)["ap"], cand, thresholds, scores, seconds))
    if not results:
        raise SystemExit(f"none of {a.candidates} in {run}")
    _, chosen, thresholds, scores, seconds = max(results, key=lambda r: r[0])
    print(f"chosen: {chosen} (val AP@0.5 {scores.at(0.5)['ap']:.3f})", flush=True)
    training = json.loads((run / "training.json").read_text()) if (run / "training.json").is_file() else {}
    log = run.parent / "train_stardist.log"
    epochs_done = None
    if log.is_file():
        text = log.read_text(errors="ignore")
        hits = re.findall(r"epoch (\d+)/\d+ epoch=\d+ seconds=([\d.]+)", text)
        if hits:
            epochs_done, train_seconds = int(hits[-1][0]), float(hits[-1][1])
            training.setdefault("seconds", train_seconds)
        losses = re.findall(r"epoch (\d+)/\d+ epoch=\d+ .*? val_loss=([\d.]+)", text)
        if losses:
            training["best_epoch"] = int(min(losses, key=lambda e: float(e[1]))[0])
    cfg = json.loads((run / "config.json").read_text())
    settings = training.get("settings", {})
    # (training.json of runs made before the settings were renamed: batch, lr, scale_augment)
    batch = settings.get("batch_size", settings.get("batch"))
    lr = settings.get("learning_rate", settings.get("lr"))
    zoom = (settings.get("augment") or {}).get("zoom", settings.get("scale_augment"))
    if training.get("framework") == "pytorch":  # made by scripts/export_stardist_torch.py
        ck = next((c for c in training.get("checkpoints", []) if c.get("weights") == chosen), {})
        command = a.command or (f"python {a.recipe} --out {run.parent} --grid {cfg['grid'][0]} "
                                f"--batch {batch} --lr {lr}")
        stage = {"command": command, "framework": "pytorch", "steps": ck.get("step"), "batch": batch,
                 "seconds": ck.get("seconds"), "device": ck.get("device"), "weights": chosen,
                 "learning_rate": lr, "schedule": "linear warm-up, cosine decay; EMA of the weights",
                 "val_loss_ema": ck.get("val_loss_ema")}
    else:
        command = a.command or (f"python {a.recipe} --data {a.data} --out {run.parent} "
                                f"--epochs {cfg.get('train_epochs')}")
        stage = {"command": command, "epochs": epochs_done, "seconds": training.get("seconds"),
                 "best_epoch (lowest val loss)": training.get("best_epoch"), "weights": chosen,
                 "learning_rate": cfg.get("train_learning_rate"),
                 "area_sampling": settings.get("area_sampling", "--area-sampling" in command),
                 "reduce_lr_patience": settings.get("reduce_lr_patience",
                                                    cfg.get("train_reduce_lr", {}).get("patience"))}
        if zoom:
            stage["scale_augment"] = zoom  # the card's name (the --scale-aug option)
    saved = re.fullmatch(r"weights_e(\d+)\.h5", chosen)  # kept by --save-every
    if saved:
        stage["weights_epoch"] = int(saved.group(1))
    averaged = json.loads((run / "averaged.json").read_text()) if (run / "averaged.json").is_file() else {}
    if chosen in averaged:  # made by scripts/average_stardist_weights.py
        stage["weights"] = f"{chosen}: the mean of {', '.join(averaged[chosen]['average_of'])}"
    stages, commands = [stage], [command]
    if a.previous_card:
        prev_card = json.loads(Path(a.previous_card).read_text())
        prev = prev_card["training"]
        stages = list(prev.get("stages") or [{"epochs": prev.get("epochs_run"), "seconds": prev.get("seconds")}])
        stages.append(stage | {"init": f"the previous model's weights (val AP@0.5 {prev_card['metrics']['val']['ap@0.5']})"})
        commands = [c for c in prev["command"].split(" && ") if "package_stardist.py" not in c] + [command]
    package = f"python scripts/package_stardist.py --run {run}"
    out_card = ModelCard(
        name=a.name, task="segment", backend="stardist2d", classes=["nucleus"], axes="YX", channels=1,
        normalization={"type": "percentile", "pmin": 1.0, "pmax": 99.8},
        description="StarDist 2D nuclei model for fluorescence images, trained on the DSB2018 fluorescence "
                    f"train split by {a.recipe}",
        training={
            "data": "dsb2018_fluo (BBBC038 / Kaggle DSB2018 stage 1, fluorescence subset): train split "
                    "(391 images) for training, val split (68 images) for weight and threshold selection",
            "command": " && ".join(commands + [package]),
            "epochs_run": sum(int(st.get("epochs") or 0) for st in stages),
            "steps_per_epoch": cfg.get("train_steps_per_epoch"),
            "seconds": round(sum(float(st.get("seconds") or 0) for st in stages)),
            "hardware": a.hardware,
            "weights": f"{chosen} of the last stage (highest val AP@0.5 among {', '.join(r[1] for r in results)})",
            "config": {k: cfg[k] for k in ("n_rays", "grid", "train_patch_size", "train_batch_size",
                                           "unet_n_depth", "unet_n_filter_base", "train_learning_rate")},
            "thresholds": thresholds,
            "stages": stages,
        },
        metrics={"val": scores.card_metrics(seconds)},
    )
    dest = Path(a.dest)
    with staged_dir(dest) as tmp:  # replaces dest at once when complete; the old model is there until then
        shutil.copy2(run / "config.json", tmp / "config.json")
        shutil.copy2(run / chosen, tmp / "weights_best.h5")  # the name stardist loads by default
        (tmp / "thresholds.json").write_text(json.dumps(thresholds))
        write_card(out_card, tmp)
    print(f"wrote {dest}: val AP@0.5 {scores.at(0.5)['ap']:.3f}")


if __name__ == "__main__":
    main()
