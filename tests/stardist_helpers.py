"""Test helpers that build small StarDist models in a subprocess.

TensorFlow never loads into the pytest process: torch tests run there too, and importing
tensorflow before torchvision in one process segfaults.
"""
import subprocess
import sys
from pathlib import Path

MAKE_TINY = r"""
import sys, json, numpy as np
from stardist.models import Config2D, StarDist2D
basedir, name, n_ch = sys.argv[1], sys.argv[2], int(sys.argv[3])
conf = Config2D(n_rays=8, grid=(2, 2), n_channel_in=n_ch, unet_n_depth=2, unet_n_filter_base=8,
                train_tensorboard=False, use_gpu=False)
m = StarDist2D(conf, name=name, basedir=basedir)
m.keras_model.save_weights(str(m.logdir / "weights_best.h5"))
json.dump({"prob": 0.5, "nms": 0.4}, open(m.logdir / "thresholds.json", "w"))
"""


def make_tiny_stardist(folder: Path, name: str = "tiny-stardist", channels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", MAKE_TINY, str(folder), name, str(channels)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder / name


def card_dict(path: Path) -> dict:
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import read_card

    return card_payload(read_card(path, "path"))


MAKE_TINY_3D = r"""
import sys, json
from stardist.models import Config3D, StarDist3D
basedir, name = sys.argv[1], sys.argv[2]
conf = Config3D(n_rays=16, grid=(1, 2, 2), n_channel_in=1, unet_n_depth=1, unet_n_filter_base=4,
                train_tensorboard=False, use_gpu=False)
m = StarDist3D(conf, name=name, basedir=basedir)
m.keras_model.save_weights(str(m.logdir / "weights_best.h5"))
json.dump({"prob": 0.5, "nms": 0.4}, open(m.logdir / "thresholds.json", "w"))
"""


def make_tiny_stardist3d(folder: Path, name: str = "tiny-stardist3d") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, "-c", MAKE_TINY_3D, str(folder), name],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder / name
