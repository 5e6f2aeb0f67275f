"""The models shipped in the package: loadable by their own libraries, documented, and accurate."""
import json
import subprocess
import sys

import numpy as np
import pytest

from napari_cnnvision.core.registry import ModelRegistry, shipped_models_dir
from napari_cnnvision.sample_data import _stardist_image

SHIPPED = {"nuclei-stardist": "stardist2d", "nuclei-unet": "unet"}


@pytest.fixture(scope="module")
def pool():
    """One worker pool for the module (conftest's is per test): each framework's worker starts
    once and loads each shipped model once; every test still runs its own jobs."""
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


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
    from napari_cnnvision.backends.dispatch import card_payload, job_for

    img, mask = sample_with_mask
    card = ModelRegistry().get(name)
    res = pool.run(job_for(card), {"image": img, "model": card_payload(card)})
    s = score_segmentations([mask], [res.labels])
    assert s.at(0.5)["ap"] >= min_ap50, s.at(0.5)


def test_shipped_models_on_the_shared_val_split(pool, shared_data):
    """A slice of the real val split (the full split is benchmarks/bench_segmentation_accuracy.py)."""
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.backends.dispatch import card_payload, job_for
    from napari_cnnvision.core.datasets import load_segmentation_split

    val = load_segmentation_split(shared_data / "dsb2018_fluo", "val", limit=12)
    for name in SHIPPED:
        card = ModelRegistry().get(name)
        preds = [pool.run(job_for(card), {"image": x, "model": card_payload(card)}).labels for x in val.images]
        ap50 = score_segmentations(val.masks, preds).at(0.5)["ap"]
        assert ap50 >= 0.6, (name, ap50)


def _edge_recall(truth, pred):
    """Share of the ground-truth objects touching the image edge that are found at IoU >= 0.5."""
    import numpy as np
    from stardist.matching import matching

    edge = set(np.unique(np.concatenate([truth[0], truth[-1], truth[:, 0], truth[:, -1]]))) - {0}
    m = matching(truth, pred, thresh=0.5, report_matches=True)
    hit = {t for (t, _), s in zip(m.matched_pairs, m.matched_scores) if s >= 0.5}
    return len(edge & hit) / max(len(edge), 1), len(edge)


def test_nuclei_cut_by_the_image_edge_are_segmented(pool, sample_with_mask):
    """StarDist's default drops object centres within 2 grid steps of the edge; ours keeps them."""
    from napari_cnnvision.backends.dispatch import card_payload

    img, mask = sample_with_mask
    card = card_payload(ModelRegistry().get("nuclei-stardist"))
    crops = [np.s_[37:, 21:], np.s_[:-29, :-43], np.s_[61:400, 13:300], np.s_[150:470, 200:520]]  # arbitrary
    found = {0: 0, 2: 0}
    n_edge = 0
    for crop in crops:
        for border in found:
            res = pool.run("stardist.predict", {"image": img[crop], "model": card, "exclude_border": border})
            recall, n = _edge_recall(mask[crop], res.labels)
            found[border] += recall * n
        n_edge += n
    assert n_edge >= 40
    # measured: 80% of the 60 nuclei cut by a crop's edge found, 63% with StarDist's default
    assert found[0] / n_edge >= 0.7 and found[0] >= found[2] + 6, (found, n_edge)


def test_test_time_augmentation_is_flip_equivariant(pool, sample_with_mask):
    """With TTA the result of a mirrored image is the mirrored result (up to float rounding)."""
    import numpy as np
    from stardist.matching import matching

    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.backends.dispatch import card_payload

    img, mask = sample_with_mask
    img, mask = img[:301, :257], mask[:301, :257]  # odd sizes: mirroring keeps StarDist's grid
    for name in SHIPPED:
        card = card_payload(ModelRegistry().get(name))
        job = "unet.predict" if name == "nuclei-unet" else "stardist.predict"
        plain = pool.run(job, {"image": img, "model": card})
        aug = pool.run(job, {"image": img, "model": card, "tta": True})
        aug_mirrored = pool.run(job, {"image": img[:, ::-1].copy(), "model": card, "tta": True})
        assert not np.array_equal(plain.labels, aug.labels)  # the averaged output differs...
        # ...and does not depend on the image's orientation, down to the outlines (IoU 0.9; without
        # TTA the mirrored results agree on only 74% (StarDist) / 53% (U-Net) of objects at IoU 0.9)
        same = matching(aug.labels, aug_mirrored.labels[:, ::-1], thresh=0.9)
        assert same.f1 >= 0.97, (name, same)
        ap_plain = score_segmentations([mask], [plain.labels]).at(0.5)["ap"]
        ap_aug = score_segmentations([mask], [aug.labels]).at(0.5)["ap"]
        assert ap_aug >= ap_plain - 0.03, (name, ap_plain, ap_aug)


def test_nuclei_he_stardist_card_and_histo_val_slice(pool, shared_data):
    """The RGB / H&E model: a complete card, and on a slice of the histo val split (the full split:
    benchmarks/bench_he_finetune.py) it segments the RGB images as they are."""
    from napari_cnnvision.backends.dispatch import card_payload, job_for
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.core.datasets import load_segmentation_split

    test_shipped_model_has_a_complete_card("nuclei-he-stardist", "stardist2d")
    card = ModelRegistry().get("nuclei-he-stardist")
    assert card.channels == 3 and card.training["base_model"] == "nuclei-stardist"
    val = load_segmentation_split(shared_data / "dsb2018_histo", "val", limit=8)
    assert val.images[0].ndim == 3 and val.images[0].shape[-1] == 3
    preds = [pool.run(job_for(card), {"image": x, "model": card_payload(card)}).labels for x in val.images]
    ap50 = score_segmentations(val.masks, preds).at(0.5)["ap"]
    assert ap50 >= 0.5, ap50
