"""Pretrained models that are not cached, on a machine without network: a clear message.

Deterministic on any machine: the workers' downloads go through a proxy at a closed local port
(127.0.0.1:9), so StarDist's and torchvision's own download code fails at once with "connection
refused" whether or not this machine has internet (the per-test KERAS_HOME and TORCH_HOME of
conftest hold no cached weights).
"""
import pytest

from napari_cnnvision.widgets._compute import describe_error
from napari_cnnvision.worker import JobError, WorkerPool

UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(scope="module", autouse=True)
def _no_network():
    """Set before any worker of this module starts: spawned workers take the environment with them."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            mp.setenv(var, UNREACHABLE)
        for var in ("no_proxy", "NO_PROXY"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="module")
def offline_pool():
    p = WorkerPool()
    yield p
    p.shutdown()


def _refused(exc) -> bool:
    return "refused" in str(exc).lower()  # our proxy answered, not the network: the test is deterministic


def test_stardist_pretrained_offline_is_a_clear_error(offline_pool):
    """StarDist's own download-and-cache code runs; when it cannot download, a clear message."""
    import numpy as np

    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import ModelRegistry

    card = ModelRegistry().get("2D_versatile_fluo")
    assert card.source == "pretrained" and card.path is None
    image = np.random.default_rng(0).normal(10, 2, (64, 64)).astype(np.float32)
    with pytest.raises(JobError, match="not in the local cache and could not be downloaded") as ei:
        offline_pool.run("stardist.predict", {"image": image, "model": card_payload(card)})
    assert ei.value.kind == "ModelUnavailable" and _refused(ei.value)
    assert describe_error(ei.value) == str(ei.value)  # shown as is, no class prefix
    with pytest.raises(JobError, match="could not be downloaded") as ei:
        offline_pool.run("stardist.download", {"name": "2D_versatile_fluo"})
    assert ei.value.kind == "ModelUnavailable" and _refused(ei.value)


def test_torchvision_coco_weights_offline_is_a_clear_error(offline_pool):
    from napari_cnnvision.backends.pretrained import download_job_name

    job = download_job_name("fasterrcnn_resnet50_fpn_coco")
    assert job == "torchvision.download"
    with pytest.raises(JobError, match="could not be downloaded") as ei:
        offline_pool.run(job, {"name": "fasterrcnn_resnet50_fpn_coco"})
    assert ei.value.kind == "ModelUnavailable" and _refused(ei.value)
    assert "Connect to the internet once" in str(ei.value)


def test_models_widget_download_offline_reports(make_napari_viewer, qtbot):
    from napari_cnnvision.widgets.models import ModelsWidget

    viewer = make_napari_viewer()
    w = ModelsWidget(viewer)
    names = [row[0] for row in w.table.value["data"]]
    assert "2D_versatile_fluo" in names
    w.pretrained.value = "2D_versatile_fluo"
    w.download()
    qtbot.waitUntil(lambda: w.download_btn.enabled, timeout=120000)
    assert "could not be downloaded" in w.status.value and _refused(w.status.value)
    assert not w.status.value.startswith("ModelUnavailable")
    assert "tf: pid" in w.workers.value
