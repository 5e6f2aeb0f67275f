"""StarDist fine-tuning through the worker job ``stardist.train`` with the U-Net job's parameters:
a 1-channel base on RGB images (first convolution adapted, recorded in the card), a card with
val metrics, thresholds re-optimized, a time budget, refused names; and the shipped H&E model."""
import json

import numpy as np
import pytest

from napari_cnnvision.backends.stardist.train import StarDistTrainSettings
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import ModelRegistry, shipped_models_dir


@pytest.fixture(scope="module")
def tf_pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


def _rgb_blobs(shape=(96, 96), n=6, seed=0):
    """Dark purple discs on a pale pink ground, as H&E nuclei look; and their labels."""
    rng = np.random.default_rng(seed)
    img = np.empty(shape + (3,), np.float32)
    img[:] = (230, 200, 215)
    lab = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(n):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        disc &= lab == 0
        lab[disc] = k + 1
        img[disc] = (90, 60, 150)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lab


def test_time_budget_in_minutes_or_seconds_and_bad_values():
    assert StarDistTrainSettings.from_dict({"time_budget_min": 2}).time_budget == 120
    assert StarDistTrainSettings.from_dict({"time_budget": 30, "lr": 1e-4}).learning_rate == 1e-4
    with pytest.raises(InputError, match="time_budget"):
        StarDistTrainSettings.from_dict({"time_budget": -1})
    with pytest.raises(InputError, match="val_ap_every"):
        StarDistTrainSettings.from_dict({"val_ap_every": -1})


def test_an_existing_name_is_refused_before_anything_is_trained(tmp_path):
    from napari_cnnvision.backends.stardist.train import train_job
    from napari_cnnvision.core.progress import NULL_PROGRESS

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    img, lab = _rgb_blobs()
    with pytest.raises(InputError, match="exists already"):
        train_job(NULL_PROGRESS, [img], [lab], [img], [lab], out_dir=str(tmp_path), name="mine")
    with pytest.raises(InputError, match="exists already"):  # a shipped model's name too
        train_job(NULL_PROGRESS, [img], [lab], [img], [lab], out_dir=str(tmp_path), name="nuclei-stardist")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "x"


def test_fine_tune_a_1_channel_base_on_rgb_images_with_a_time_budget(tf_pool, tmp_path):
    """One tiny run: nuclei-stardist (1 channel) on RGB images, stopped by its time budget after
    the first batch; the folder is registered at once, with a card and thresholds."""
    pairs = [_rgb_blobs(seed=s) for s in range(3)]
    settings = {"patch_size": 64, "batch_size": 1, "epochs": 3, "steps_per_epoch": 2, "time_budget": 0.01}
    events = []
    res = tf_pool.run("stardist.train", {
        "images": [p[0] for p in pairs[:2]], "masks": [p[1] for p in pairs[:2]],
        "val_images": [pairs[2][0]], "val_masks": [pairs[2][1]], "settings": settings,
        "init_folder": str(shipped_models_dir() / "nuclei-stardist"), "data": "three synthetic H&E-like crops",
        "command": "pytest", "name": "he-mini", "out_dir": str(tmp_path)}, on_event=events.append)
    assert res.stopped and res.epochs_run == 1 < settings["epochs"]  # the budget ended it after one batch
    assert res.channel_adaptation["method"] == "inverted_luminance" and res.channel_adaptation["to_channels"] == 3
    card = ModelRegistry(user_dir=tmp_path).get("he-mini")  # listed at once
    assert card.source == "user" and card.channels == 3 and card.axes == "YXC"
    t = card.training
    assert t["base_model"] == "nuclei-stardist" and t["channel_adaptation"]["from_channels"] == 1
    assert t["data"] == "three synthetic H&E-like crops" and t["command"] == "pytest"
    assert t["stopped_early"] and t["time_budget_s"] == 0.01 and t["hardware"] and t["seconds"] > 0
    assert t["history"]["loss"] and t["history"]["val_ap50"]  # the curves
    assert 0 <= card.metrics["val"]["ap@0.5"] <= 1 and card.metrics["val"]["n_images"] == 1
    folder = tmp_path / "he-mini"
    thr = json.loads((folder / "thresholds.json").read_text())
    assert thr == {"prob": res.thresholds["prob"], "nms": res.thresholds["nms"]}
    assert json.loads((folder / "config.json").read_text())["n_channel_in"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert any(e.metrics.get("val_ap50") is not None for e in events)
    from napari_cnnvision.backends.dispatch import card_payload

    out = tf_pool.run("stardist.predict", {"image": pairs[0][0], "model": card_payload(card)})
    assert out.labels.shape == (96, 96)



def test_a_fine_tune_that_does_not_beat_its_base_keeps_the_base(tf_pool, tmp_path):
    """The base's weights (first convolution adapted) are the last candidate for the final model."""
    import h5py

    from napari_cnnvision.backends.training.outcome import job_outcome

    pairs = [_rgb_blobs(seed=s) for s in range(3)]
    settings = {"patch_size": 64, "batch_size": 1, "epochs": 1, "steps_per_epoch": 3,
                "learning_rate": 5.0}  # a learning rate that wrecks the network
    res = tf_pool.run("stardist.train", {
        "images": [p[0] for p in pairs[:2]], "masks": [p[1] for p in pairs[:2]],
        "val_images": [pairs[2][0]], "val_masks": [pairs[2][1]], "settings": settings,
        "init_folder": str(shipped_models_dir() / "nuclei-stardist"), "name": "wrecked", "out_dir": str(tmp_path)})
    assert res.weights == "weights_start.h5" and res.kept_base
    card = ModelRegistry(user_dir=tmp_path).get("wrecked")
    assert card.training["weights"] == "weights_start.h5" and card.metrics["val"]["ap@0.5"] > 0.5
    folder = tmp_path / "wrecked"
    assert not (folder / "weights_start.h5").exists()  # its copy is weights_best.h5

    def layer(path, name):
        with h5py.File(path, "r") as f:
            out = []
            f.visit(lambda k: out.append(np.asarray(f[k])) if name in k and isinstance(f[k], h5py.Dataset) else None)
            return out

    base = shipped_models_dir() / "nuclei-stardist" / "weights_best.h5"
    for a, b in zip(layer(base, "features"), layer(folder / "weights_best.h5", "features")):
        assert np.array_equal(a, b)  # the base's own weights past the first convolution
    assert layer(base, "features") and "keeps the base's weights" in job_outcome(res, "wrecked", "segment").describe()

def test_shipped_he_model_has_a_card_and_segments_the_he_sample(tf_pool):
    from napari_cnnvision.backends.dispatch import card_payload, job_for
    from napari_cnnvision.sample_data import load_sample

    card = ModelRegistry().get("nuclei-he-stardist")
    assert card.source == "shipped" and card.backend == "stardist2d" and card.channels == 3
    t = card.training
    assert t["data"] and t["command"] and t["seconds"] and t["hardware"] and t["base_model"] == "nuclei-stardist"
    assert t["channel_adaptation"]["method"] == "inverted_luminance"
    assert card.metrics["val"]["ap@0.5"] > 0.6  # dsb2018_histo val (the base model: about 0.5)
    folder = shipped_models_dir() / "nuclei-he-stardist"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 15 * 2**20
    img = load_sample("he_2d")
    res = tf_pool.run(job_for(card), {"image": img, "model": card_payload(card)})
    assert res.labels.shape == img.shape[:2]
    assert len(np.unique(res.labels)) - 1 >= 100  # the sample holds a few hundred nuclei
