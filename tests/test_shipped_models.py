"""The models shipped in the package: loadable by their own libraries, documented, and accurate."""
import json
import subprocess
import sys

import pytest

from napari_cnnvision.core.registry import ModelRegistry, shipped_models_dir
from napari_cnnvision.sample_data import _stardist_image

SHIPPED = {"nuclei-stardist": "stardist2d", "nuclei-unet": "unet"}


@pytest.fixture(scope="module")
def sample_with_mask():
    import tifffile

    return tifffile.imread(_stardist_image("img2d.tif")), tifffile.imread(_stardist_image("mask2d.tif"))


@pytest.mark.parametrize("name, backend", SHIPPED.items())
def test_shipped_model_has_a_complete_card(name, backend):
    card = ModelRegistry().get(name)
    assert card.source == "shipped" and card.backend == backend and card.task == "segment"
    assert card.training["data"] and card.training["command"]
    assert card.training.get("seconds")
    ap50 = card.metrics["val"]["ap@0.5"]  # one metric naming for every card
    assert 0 < ap50 <= 1
    size = sum(p.stat().st_size for p in (shipped_models_dir() / name).iterdir())
    assert size < 15 * 2**20  # a few MB


def test_default_segmentation_model_is_nuclei_stardist():
    assert ModelRegistry().default("segment").name == "nuclei-stardist"


def test_nuclei_stardist_loads_with_stardist_itself():
    folder = shipped_models_dir() / "nuclei-stardist"
    code = ("import sys; from stardist.models import StarDist2D; "
            "m = StarDist2D(None, name='nuclei-stardist', basedir=sys.argv[1]); "
            "print('thresholds', m.thresholds.prob, m.thresholds.nms)")
    out = subprocess.run([sys.executable, "-c", code, str(folder.parent)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    thr = json.loads((folder / "thresholds.json").read_text())
    assert f"thresholds {thr['prob']} {thr['nms']}" in out.stdout


@pytest.mark.parametrize("name, min_ap50", [("nuclei-stardist", 0.7), ("nuclei-unet", 0.7)])
def test_shipped_model_segments_the_stardist_sample(pool, sample_with_mask, name, min_ap50):
    """stardist's bundled DSB2018 image and its ground truth (not part of our training data split)."""
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.backends.segment import card_payload, job_for

    img, mask = sample_with_mask
    card = ModelRegistry().get(name)
    res = pool.run(job_for(card), {"image": img, "model": card_payload(card)})
    s = score_segmentations([mask], [res.labels])
    assert s.at(0.5)["ap"] >= min_ap50, s.at(0.5)


def test_shipped_models_on_the_shared_val_split(pool, shared_data):
    """A slice of the real val split (the full split is benchmarks/bench_segmentation_accuracy.py)."""
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.backends.segment import card_payload, job_for
    from napari_cnnvision.core.datasets import load_segmentation_split

    val = load_segmentation_split(shared_data / "dsb2018_fluo", "val", limit=12)
    for name in SHIPPED:
        card = ModelRegistry().get(name)
        preds = [pool.run(job_for(card), {"image": x, "model": card_payload(card)}).labels for x in val.images]
        ap50 = score_segmentations(val.masks, preds).at(0.5)["ap"]
        assert ap50 >= 0.6, (name, ap50)
