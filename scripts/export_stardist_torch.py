"""Turn checkpoints of ``scripts/train_nuclei_stardist_torch.py`` into a StarDist model folder,
or a StarDist model's weights into a checkpoint (to continue training one with PyTorch).

    # checkpoints -> <run>/ (config.json, weights_<ckpt name>.h5 each, training.json)
    python scripts/export_stardist_torch.py --to-stardist runs-torch/g1/ckpt_*.npz --run runs-torch/g1/nuclei-stardist
    # then compare them on val and package the best one:
    python scripts/package_stardist.py --run runs-torch/g1/nuclei-stardist --candidates weights_ckpt_050.h5 weights_ckpt_100.h5

    # a StarDist model folder -> checkpoint (for --init)
    python scripts/export_stardist_torch.py --from-stardist src/napari_cnnvision/models/nuclei-stardist --out init.npz

The weights go through ``keras_model.set_weights`` (Keras layer order), so ``stardist`` loads
the folder like any model it trained itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_cnnvision.backends.stardist.torch_train import TorchTrainSettings, load_checkpoint, save_checkpoint
from napari_cnnvision.core.io import atomic_write_text


def to_stardist(ckpts, run: Path):
    from stardist.models import Config2D, StarDist2D

    metas = []
    model = settings = None
    for c in ckpts:
        weights, meta = load_checkpoint(c)
        if model is None:
            kw = dict(meta["config2d"])
            kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
            settings = TorchTrainSettings.from_dict(meta["settings"])  # also a checkpoint's with the former names
            conf = Config2D(**kw, train_patch_size=(meta["patch"], meta["patch"]),
                            train_batch_size=settings.batch_size, train_learning_rate=settings.learning_rate,
                            use_gpu=False)
            model = StarDist2D(conf, name=run.name, basedir=str(run.parent))  # writes config.json
        model.keras_model.set_weights(weights)
        name = f"weights_{Path(c).stem}.h5"
        model.keras_model.save_weights(str(run / name))
        metas.append({k: meta[k] for k in meta if k not in ("settings", "weights")}
                     | {"checkpoint": str(c), "weights": name, "averaging": meta.get("weights")})
        print(f"{c} -> {run / name} (step {meta.get('step')}, val loss {meta.get('val_loss_ema')})", flush=True)
    # the last checkpoint's settings (all checkpoints of one run share them)
    atomic_write_text(run / "training.json", json.dumps({"framework": "pytorch", "settings": settings.to_dict(),
                                                         "checkpoints": metas}, indent=1))


def from_stardist(model_dir: Path, out: Path):
    from stardist.models import StarDist2D

    m = StarDist2D(None, name=model_dir.name, basedir=str(model_dir.parent))
    save_checkpoint(out, m.keras_model.get_weights(), {"from": str(model_dir), "config": vars(m.config)})
    print(f"{model_dir} -> {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to-stardist", nargs="+", default=None, metavar="CKPT")
    p.add_argument("--run", default=None, help="model folder to write (with --to-stardist)")
    p.add_argument("--from-stardist", default=None, metavar="MODEL_DIR")
    p.add_argument("--out", default=None, help="checkpoint to write (with --from-stardist)")
    a = p.parse_args(argv)
    if a.to_stardist:
        if not a.run:
            p.error("--to-stardist needs --run")
        to_stardist(a.to_stardist, Path(a.run))
    elif a.from_stardist:
        if not a.out:
            p.error("--from-stardist needs --out")
        from_stardist(Path(a.from_stardist), Path(a.out))
    else:
        p.error("give --to-stardist or --from-stardist")


if __name__ == "__main__":
    sys.exit(main())
