"""Recipe: train the ``nuclei-stardist`` network with PyTorch (GPU if there is one, else CPU).

Same network, training targets and losses as ``stardist``'s own (Keras) training — see
``napari_cnnvision.backends.stardist.torch_train`` — so the weights load into StarDist unchanged.
Writes EMA-weight checkpoints ``<out>/ckpt_<percent>.npz``; turn them into a StarDist model
folder and compare them on val with ``scripts/export_stardist_torch.py``.

    python scripts/train_nuclei_stardist_torch.py --data ../shared/data/dsb2018_fluo --out runs-torch/g1 \
        --grid 1 --steps 20000 --time-budget 420

Only numpy, scipy, tifffile and torch are needed (no TensorFlow, no stardist).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_cnnvision.backends.stardist.torch_train import (
    TorchStarDistConfig, TorchTrainSettings, load_checkpoint, train_torch)
from napari_cnnvision.core.datasets import load_segmentation_split


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/dsb2018_fluo")
    p.add_argument("--out", default="runs-torch/nuclei-stardist")
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--rays", type=int, default=32)
    p.add_argument("--filters", type=int, default=32, help="unet_n_filter_base")
    p.add_argument("--depth", type=int, default=3, help="unet_n_depth")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; training ends at the earlier of --steps and this, the learning-rate "
                        "schedule following whichever is further along")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200, help="steps of linear learning-rate warm-up")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--n-val-patches", type=int, default=64, help="val patches for the logged val loss")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-at", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--init", default=None, help="start from these weights (a checkpoint .npz, Keras layer order)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--log-every", type=int, default=500)
    a = p.parse_args(argv)

    train = load_segmentation_split(a.data, "train", a.limit)
    val = load_segmentation_split(a.data, "val", a.limit)
    net = TorchStarDistConfig(n_rays=a.rays, grid=a.grid, unet_n_depth=a.depth, unet_n_filter_base=a.filters)
    s = TorchTrainSettings(net=net, patch_size=a.patch, batch_size=a.batch, steps=a.steps, time_budget=a.time_budget,
                           learning_rate=a.lr, warmup=a.warmup, ema=a.ema, n_val_patches=a.n_val_patches,
                           workers=a.workers, seed=a.seed, save_at=tuple(a.save_at), log_every=a.log_every)
    init = load_checkpoint(a.init)[0] if a.init else None
    log_path = Path(a.out) / "train.log"
    Path(a.out).mkdir(parents=True, exist_ok=True)

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log(f"train {len(train)} images, val {len(val)} images; command: {' '.join(sys.argv)}")
    saved = train_torch(train.images, train.masks, val.images, val.masks, a.out, s, init_weights=init, log=log)
    log(json.dumps({"checkpoints": [str(x) for x in saved]}))


if __name__ == "__main__":
    sys.exit(main())
