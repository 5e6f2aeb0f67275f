import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# This test process also runs napari (Qt + Mesa's OpenGL). The U-Net tests run small PyTorch
# trainings in it, and torch's optimizer imports torch._dynamo, which imports triton if it is
# installed; triton's bundled LLVM segfaults beside Mesa's. Triton is only for GPU kernels, so
# hide it here. (The plugin itself never runs PyTorch in napari's process: it uses the worker.)
sys.modules.setdefault("triton", None)
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_user_dir(tmp_path, monkeypatch):
    """Never read or write the real per-user model folder; no keras/torch caches of the user."""
    monkeypatch.setenv("NAPARI_CNNVISION_DATA_DIR", str(tmp_path / "user-data"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture
def pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("the shared datasets (../shared/data) are not available")
    return SHARED_DATA


def shm_names():
    d = Path("/dev/shm")
    return {p.name for p in d.iterdir() if p.name.startswith("psm_")} if d.is_dir() else set()


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """A folder holding test_detect_widget's square detector (``MODEL``), trained once per session
    on one thread (a few seconds, where torch's default threads on a busy machine take minutes).
    Tests copy it into their own model folder when they add to it."""
    torch = pytest.importorskip("torch")
    from test_detect_widget import CLASSES, MODEL, squares

    from napari_cnnvision.backends.detection.models import build_detector
    from napari_cnnvision.backends.detection.train import DetTrainSettings, train_detector

    root = tmp_path_factory.mktemp("tiny-detector")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        cfg = {"arch": "yolo", "widths": [8, 16, 16, 32], "depths": [0, 1, 0, 0], "stride": 4, "head_channels": 16,
               "classes": CLASSES, "in_channels": 3, "input_size": 64}
        sample = {"image": squares(), "boxes": np.array([[10, 8, 26, 24], [36, 38, 54, 56]], np.float32),
                  "labels": np.array([1, 2])}
        settings = DetTrainSettings(epochs=60, batch_size=1, lr=2e-2, warmup_steps=2, flips=False, gain=(1.0, 1.0),
                                    offset=0.0, seed=0, device="cpu", val_every=60)
        train_detector(build_detector(cfg), cfg, [sample], [sample], root / MODEL, settings)
    finally:
        torch.set_num_threads(threads)
    return root
