"""The common part of the detector recipes (``train_bloodcells_yolo.py``, ``train_bloodcells_frcnn.py``).

Loads the train and val splits of a Pascal VOC folder (zero-area boxes dropped), builds the
detector from the recipe's config (every weight random: ``weights=None``), trains it with
``napari_cnnvision.backends.detection.train`` (val mAP@0.5 chooses the epoch) and writes the
model folder to ``--out/--name``. Stop early, keeping the best epoch: ``touch <out>/<name>.stop``
or send SIGTERM; ``--resume`` continues from ``<out>/<name>.ckpt``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path


def parser(doc: str, name: str, **defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/bccd")
    p.add_argument("--classes", default="RBC,WBC,Platelets")
    p.add_argument("--out", default="runs-det")
    p.add_argument("--name", default=name)
    p.add_argument("--epochs", type=int, default=defaults.get("epochs", 100))
    p.add_argument("--batch", type=int, default=defaults.get("batch", 8))
    p.add_argument("--lr", type=float, default=defaults.get("lr", 2e-3))
    p.add_argument("--weight-decay", type=float, default=defaults.get("weight_decay", 5e-4))
    p.add_argument("--warmup", type=int, default=defaults.get("warmup", 100), help="warm-up steps")
    p.add_argument("--scale", type=float, default=defaults.get("scale", 0.5),
                   help="the network sees the images resized by this factor")
    p.add_argument("--zoom", type=float, default=defaults.get("zoom", 0.0), help="zoom augmentation (0: off)")
    p.add_argument("--budget-min", type=float, default=defaults.get("budget_min"), help="time budget in minutes")
    p.add_argument("--val-every", type=int, default=defaults.get("val_every", 1))
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/<name>.ckpt")
    p.add_argument("--init", default=None, help="start from the weights of this model folder (a later stage)")
    p.add_argument("--hardware", default=None, help="what to record as hardware in the card")
    return p


def load(a):
    from napari_cnnvision.backends.detection.data import load_split
    from napari_cnnvision.backends.detection.train import samples_from_split

    classes = a.classes.split(",")
    splits = {s: load_split(a.data, s, classes=classes) for s in ("train", "val")}
    samples = {s: samples_from_split(sp)[: a.limit] for s, sp in splits.items()}
    for s, sp in splits.items():
        print(f"{s}: {len(samples[s])} images, {sp.counts()}, {sp.dropped} zero-area box(es) dropped", flush=True)
    return classes, samples, splits


def run(a, config: dict, description: str, argv=None, script: str = ""):
    import torch

    from napari_cnnvision.backends.detection.models import build_detector
    from napari_cnnvision.backends.detection.train import DetectorTrainSettings, train_detector
    from napari_cnnvision.core.progress import Progress

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    classes, samples, splits = load(a)
    config = {**config, "classes": classes}
    model = build_detector(config)
    if a.init:
        from napari_cnnvision.backends.detection.models import load_detector

        init_model, init_cfg = load_detector(a.init)
        if init_cfg["arch"] != config["arch"] or init_cfg["classes"] != classes:
            raise SystemExit(f"--init {a.init} is a {init_cfg['arch']} for {init_cfg['classes']}, not this recipe's")
        config = {**init_cfg, "score_thresh": config["score_thresh"], "nms_thresh": config["nms_thresh"]}
        model = init_model
        model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{config['arch']}: {n_params / 1e6:.2f} M parameters", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = DetectorTrainSettings.from_dict(dict(
        epochs=a.epochs, batch_size=a.batch, learning_rate=a.lr, weight_decay=a.weight_decay,
        warmup_steps=a.warmup, time_budget=a.budget_min * 60 if a.budget_min else None, augment={"zoom": a.zoom},
        seed=a.seed, val_every=a.val_every, checkpoint=str(out / f"{a.name}.ckpt"), resume=a.resume))

    def emit(ev):
        m = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.metrics.items())
        print(f"[{time.strftime('%H:%M:%S')}] {ev.message} {m}", flush=True)

    stop_file = out / f"{a.name}.stop"
    stop_file.unlink(missing_ok=True)
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    stop = lambda: bool(term) or stop_file.exists()  # noqa: E731

    command = f"python {script} " + " ".join(sys.argv[1:] if argv is None else argv)
    device = "CUDA GPU" if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    hardware = a.hardware or f"{device} ({a.threads} PyTorch thread(s), {platform.processor() or platform.machine()})"
    card = {
        "name": a.name,
        "description": description,
        "training": {
            "data": (f"{a.data} (Pascal VOC; train split: {len(samples['train'])} images to train, val split: "
                     f"{len(samples['val'])} images to choose the epoch; {splits['train'].dropped + splits['val'].dropped}"
                     " zero-area box(es) dropped)"),
            "command": command.strip(),
            "hardware": hardware,
            "input": f"RGB images as they are (640x480 in BCCD), resized by {config['scale']} inside the network",
            "pretrained": "trained from scratch, no pretrained weights reachable",
            "n_parameters": n_params,
            "init": a.init,
        },
    }
    res = train_detector(model, config, samples["train"], samples["val"], out / a.name, settings,
                         Progress(emit, stop), card)
    print(json.dumps({"model_dir": res.model_dir, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                      "seconds": round(res.seconds, 1), "metrics": res.metrics}), flush=True)
    return res
