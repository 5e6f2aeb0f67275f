"""Recipe for the shipped ``nuclei-stardist`` model.

Trains StarDist 2D on the train split of the DSB2018 fluorescence data, keeps the
weights with the best validation loss, optimizes the thresholds on the val split and
writes the model folder (StarDist format) to ``--out``.

    python scripts/train_nuclei_stardist.py --data ../shared/data/dsb2018_fluo --out runs --epochs 200

Stop early (after the current epoch; threshold optimization and ``training.json`` still
run): ``touch runs/nuclei-stardist.stop``. Then ``python scripts/package_stardist.py --run
runs/nuclei-stardist`` compares the run's weights on val and copies the best, with its
model card, into the package.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from napari_cnnvision.backends.augment import AugmentSettings
from napari_cnnvision.backends.stardist.train import StarDistTrainSettings, train_stardist2d
from napari_cnnvision.core.datasets import load_segmentation_split
from napari_cnnvision.core.progress import Progress


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--out", default="runs")
    p.add_argument("--name", default="nuclei-stardist")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--init", default=None,
                   help="start from these weights (.h5), e.g. the shipped model's, to continue training")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--area-sampling", action="store_true",
                   help="tile large training images so patches are drawn in proportion to image area")
    p.add_argument("--lr-patience", type=int, default=40,
                   help="halve the learning rate after this many epochs without a lower val loss")
    p.add_argument("--grid", type=int, default=2,
                   help="output grid step (2: predict every 2nd pixel, as the shipped model; 1: full resolution, "
                        "better for tiny nuclei; 170 s vs 52 s per epoch on 2 CPU cores)")
    p.add_argument("--rays", type=int, default=32, help="number of rays per object")
    p.add_argument("--scale-aug", type=float, default=0.0,
                   help="random per-axis zoom of each patch by up to 1+S (0: off)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also keep every N-th epoch's weights as weights_e<epoch>.h5, for package_stardist.py "
                        "--candidates")
    a = p.parse_args(argv)

    train = load_segmentation_split(a.data, "train", a.limit)
    val = load_segmentation_split(a.data, "val", a.limit)
    print(f"train {len(train)} images, val {len(val)} images", flush=True)
    settings = StarDistTrainSettings(epochs=a.epochs, steps_per_epoch=a.steps,
                                     patch_size=(a.patch, a.patch), batch_size=a.batch,
                                     learning_rate=a.lr, area_sampling=a.area_sampling,
                                     reduce_lr_patience=a.lr_patience, grid=(a.grid, a.grid), n_rays=a.rays,
                                     augment=AugmentSettings(zoom=a.scale_aug), save_every=a.save_every)

    def emit(ev):
        m = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.metrics.items())
        print(f"[{time.strftime('%H:%M:%S')}] {ev.message} {m}", flush=True)

    # Stop after the current epoch, keeping the best weights: `touch <out>/<name>.stop` or SIGTERM.
    stop_file = Path(a.out) / f"{a.name}.stop"
    stop_file.unlink(missing_ok=True)
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    stop = lambda: bool(term) or stop_file.exists()  # noqa: E731

    res = train_stardist2d(train.images, train.masks, val.images, val.masks, a.out, a.name,
                           settings, init_weights=a.init, progress=Progress(emit, stop))
    print(json.dumps({"model_dir": res.model_dir, "epochs": res.epochs_run, "seconds": res.seconds,
                      "thresholds": res.thresholds}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
