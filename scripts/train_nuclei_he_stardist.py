"""Recipe of the shipped ``nuclei-he-stardist``: ``nuclei-stardist`` (fluorescence) fine-tuned on H&E.

    python scripts/train_nuclei_he_stardist.py --data ../shared/data/dsb2018_histo --out runs/he \
        --minutes 40 --dest src/napari_cnnvision/models/nuclei-he-stardist

The plugin's own fine-tuning path (``backends.stardist.train.train_stardist2d`` with
``init_folder``, as the Train widget and the ``train`` command run it): the 1-channel base model's
first convolution is adapted to RGB so that it starts as the base model on the inverted luminance
(``backends/channels.py``), then trained on the 21 images of the train split; the val split (52
images) chooses the weights (lowest val loss, or the last epoch's: the higher val AP@0.5) and
the thresholds (searched on ``--threshold-images`` of them, evenly spread). The test split is
never read. ``--dest`` copies the model folder (config, weights, thresholds, card, training
record) there, with the card's command and data filled in.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from napari_cnnvision.backends.stardist.train import StarDistTrainSettings, train_stardist2d
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.io import atomic_write_text, staged_dir
from napari_cnnvision.core.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FILES = ("config.json", "weights_best.h5", "thresholds.json", "model.json", "training.json")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/dsb2018_histo")
    p.add_argument("--base", default="src/napari_cnnvision/models/nuclei-stardist", help="run from the repository root")
    p.add_argument("--out", default="runs/he")
    p.add_argument("--name", default="nuclei-he-stardist")
    p.add_argument("--minutes", type=float, default=40.0, help="time budget of the training itself")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--zoom", type=float, default=0.2, help="augment.zoom")
    p.add_argument("--threshold-images", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dest", default=None, help="copy the finished model folder here (the package's models/)")
    p.add_argument("--hardware", default=None, help="what it trained on, for the card (default: detected)")
    p.add_argument("--package", default=None, metavar="RUN_DIR",
                   help="only copy a finished run's model folder to --dest (no training)")
    p.add_argument("--command", default=None, help="with --package: the training command, for the card")
    a = p.parse_args(argv)
    if a.package:
        if not a.dest:
            sys.exit("--package needs --dest")
        package(Path(a.package), Path(a.dest), a)
        return 0

    train = load_segmentation_split(a.data, "train")
    val = load_segmentation_split(a.data, "val")
    s = StarDistTrainSettings(patch_size=a.patch, batch_size=a.batch, epochs=a.epochs, steps_per_epoch=a.steps,
                              learning_rate=a.lr, time_budget=a.minutes * 60, val_ap_every=0, seed=a.seed,
                              reduce_lr_patience=10, augment={"zoom": a.zoom})
    command = "python scripts/train_nuclei_he_stardist.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = (f"dsb2018_histo (BBBC038 / Kaggle DSB2018 stage 1, H&E and other stained tissue): train split "
            f"({len(train)} images, {sum(int(m.max()) for m in train.masks)} nuclei) for training, val split "
            f"({len(val)} images) for weight and threshold selection")

    def log(e):
        m = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (e.metrics or {}).items())
        print(f"[{time.strftime('%H:%M:%S')}] {e.message} {m}", flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / a.name).exists():
        sys.exit(f"{out / a.name} exists; choose another --out or --name")
    res = train_stardist2d(train.images, train.masks, val.images, val.masks, out, a.name, s,
                           progress=Progress(log), init_folder=a.base, data=data, command=command, atomic=True,
                           threshold_images=a.threshold_images)
    print(f"trained {res.epochs_run} epochs in {res.seconds:.0f} s; weights {res.weights}; thresholds "
          f"{res.thresholds}; val {json.dumps(res.metrics.get('val'))}", flush=True)
    if a.dest:
        package(Path(res.model_dir), Path(a.dest), a)
    return 0


def package(run: Path, dest: Path, a) -> None:
    card = json.loads((run / "model.json").read_text())
    card["name"] = dest.name
    card["description"] = ("StarDist 2D nuclei model for H&E (RGB) brightfield tissue images: the shipped "
                           "nuclei-stardist fine-tuned on the DSB2018 histology train split by "
                           "scripts/train_nuclei_he_stardist.py")
    t = card["training"]
    if a.hardware:
        t["hardware"] = a.hardware
    if a.command:
        t["command"] = a.command
    t["recipe"] = "scripts/train_nuclei_he_stardist.py"
    t["init_folder"] = a.base  # as given (relative to the repository root)
    with staged_dir(dest) as tmp:
        for f in SHIPPED_FILES:
            shutil.copyfile(run / f, tmp / f)
        atomic_write_text(tmp / "model.json", json.dumps(card, indent=2) + "\n")
    print(f"copied to {dest}")


if __name__ == "__main__":
    sys.exit(main())
