"""Recipe for the ``nuclei-unet`` model.

Trains the PyTorch U-Net (3 classes: background / interior / boundary, seeded watershed)
on the train split of the DSB2018 fluorescence data, keeps the weights with the best
validation AP@0.5, tunes the seed threshold on the val split and writes the model folder
(config.json, weights.pt, model.json card, training.json) to ``--out/--name``.

    python scripts/train_nuclei_unet.py --data ../shared/data/dsb2018_fluo --out runs --epochs 60

Quick smoke run: ``--epochs 2 --steps 5 --limit 4``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
import time

from napari_cnnvision.backends.unet.train import UNetTrainSettings, train_unet
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.progress import Progress


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--out", default="runs")
    p.add_argument("--name", default="nuclei-unet")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--filters", type=int, default=16, help="filters of the first level (doubled per level)")
    p.add_argument("--upsampling", default="bilinear", choices=["nearest", "bilinear", "transposed"])
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="fine-tune this U-Net model folder instead of starting afresh")
    a = p.parse_args(argv)

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    train = load_segmentation_split(a.data, "train", a.limit)
    val = load_segmentation_split(a.data, "val", a.limit)
    print(f"train {len(train)} images, val {len(val)} images", flush=True)
    settings = UNetTrainSettings(epochs=a.epochs, steps_per_epoch=a.steps, batch_size=a.batch, patch_size=a.patch,
                                 learning_rate=a.lr, depth=a.depth, base_filters=a.filters, upsampling=a.upsampling,
                                 seed=a.seed)

    def emit(ev):
        m = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.metrics.items())
        print(f"[{time.strftime('%H:%M:%S')}] {ev.message} {m}", flush=True)

    # Stop early, keeping the best epoch so far: `touch <out>/<name>.stop` or send SIGTERM.
    stop_file = Path(a.out) / f"{a.name}.stop"
    stop_file.unlink(missing_ok=True)
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    stop = lambda: bool(term) or stop_file.exists()  # noqa: E731

    command = "python scripts/train_nuclei_unet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = f"{a.data} (train split: {len(train)} images, val split: {len(val)} images)"
    res = train_unet(train.images, train.masks, val.images, val.masks, a.out, a.name, settings,
                     init_folder=a.init, progress=Progress(emit, stop), data=data, command=command.strip())
    print(json.dumps({"model_dir": res.model_dir, "epochs": res.epochs_run, "best_epoch": res.best_epoch,
                      "seconds": round(res.seconds, 1), "thresholds": res.thresholds, "metrics": res.metrics}),
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
