"""The Python API: in-process by default, isolated when the other framework is loaded."""
import subprocess
import sys

import numpy as np
import pytest
from stardist_helpers import make_tiny_stardist

CODE = r"""
import sys, numpy as np
import torch, torchvision  # a torch user's session
from napari_cnnvision import api
from napari_cnnvision.sample_data import load_sample
img = load_sample("nuclei_2d")[:128, :128]
res = api.segment(img, sys.argv[1], prob_thresh=0.3)
assert res.labels.shape == img.shape
print("tensorflow-in-process", "tensorflow" in sys.modules)
"""


def test_api_isolates_tensorflow_from_torch(tmp_path):
    model = make_tiny_stardist(tmp_path)
    out = subprocess.run([sys.executable, "-c", CODE, str(model)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tensorflow-in-process False" in out.stdout


def test_api_default_model_error_is_clear(tmp_path, monkeypatch):
    from napari_cnnvision import api
    from napari_cnnvision.core.registry import ModelNotFound, ModelRegistry

    empty = ModelRegistry(user_dir=tmp_path / "u", shipped_dir=tmp_path / "s")
    with pytest.raises(ModelNotFound):
        api.segment(np.zeros((32, 32)), "nope", registry=empty)
