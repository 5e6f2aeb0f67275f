import sys
from pathlib import Path

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
