"""StarDist backend through the compute worker (TensorFlow stays out of the pytest process)."""

import numpy as np
import pytest
from stardist_helpers import card_dict

from napari_cnnvision.sample_data import load_sample
from napari_cnnvision.worker import JobError


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The module's three tiny untrained models (2D 1-channel, 2D RGB, 3D), built in ONE TensorFlow
    subprocess (each TensorFlow import costs seconds): {"2d": path, "rgb": path, "3d": path}."""
    import subprocess
    import sys

    import stardist_helpers as h

    base = tmp_path_factory.mktemp("models")
    jobs = [(h.MAKE_TINY, [str(base), "tiny-stardist", "1"]), (h.MAKE_TINY, [str(base), "tiny-rgb", "3"]),
            (h.MAKE_TINY_3D, [str(base), "tiny-stardist3d"])]
    code = "import sys\n" + "".join(f"sys.argv = ['make'] + {argv!r}\nexec({src!r}, {{}})\n" for src, argv in jobs)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"2d": base / "tiny-stardist", "rgb": base / "tiny-rgb", "3d": base / "tiny-stardist3d"}


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models["2d"]


@pytest.fixture(scope="module")
def tf_pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


def _blobs(shape=(128, 160), n=6, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(10, 2, shape)
    for _ in range(n):
        cy, cx = rng.integers(15, shape[0] - 15), rng.integers(15, shape[1] - 15)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 100
    return img.astype(np.uint16)


def test_predict_labels_and_table(tf_pool):
    """The shipped model on the sample: real objects, table consistent with the labels."""
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import ModelRegistry

    card = ModelRegistry().get("nuclei-stardist")
    img = load_sample("nuclei_2d")[:256, :256]
    res = tf_pool.run("stardist.predict", {"image": img, "model": card_payload(card), "prob_thresh": 0.6})
    assert res.labels.shape == img.shape and res.labels.dtype in (np.uint16, np.uint32)
    present = set(np.unique(res.labels)) - {0}
    assert res.n_objects >= 20 and set(res.table["label"].tolist()) == present
    assert {"label", "area", "centroid_y", "centroid_x", "probability"} <= set(res.table)
    for lab, area in zip(res.table["label"], res.table["area"]):
        assert (res.labels == lab).sum() == area
    assert res.table["probability"].min() >= 0.6
    assert res.prob_thresh == 0.6 and res.nms_thresh == card_nms(card)  # nms from thresholds.json
    assert res.normalization == {**card.normalization, "source": "card"} and res.frames is None


def card_nms(card):
    import json
    from pathlib import Path

    return json.loads((Path(card.path) / "thresholds.json").read_text())["nms"]


def test_the_model_card_normalization_is_used_and_can_be_overridden(tf_pool, tiny, tmp_path):
    import json
    import shutil

    folder = tmp_path / "card-0-100"
    shutil.copytree(tiny, folder)
    (folder / "model.json").write_text(json.dumps({
        "name": "card-0-100", "task": "segment", "backend": "stardist2d",
        "normalization": {"type": "percentile", "pmin": 0.0, "pmax": 100.0}}))
    img = _blobs((128, 128))
    img[5, 5] = 60000  # one hot pixel: 0/100 and 1/99.8 differ a lot
    first, second, third = [], [], []
    r1 = tf_pool.run("stardist.predict", {"image": img, "model": card_dict(folder)}, on_event=first.append)
    assert r1.normalization == {"type": "percentile", "pmin": 0.0, "pmax": 100.0, "source": "card"}
    r2 = tf_pool.run("stardist.predict", {"image": img, "model": card_dict(folder), "pmin": 1.0, "pmax": 99.8},
                     on_event=second.append)
    assert r2.normalization == {"type": "percentile", "pmin": 1.0, "pmax": 99.8, "source": "caller"}
    assert not any("cached" in e.message for e in second)  # another network input: the network ran again
    tf_pool.run("stardist.predict", {"image": img, "model": card_dict(folder)}, on_event=third.append)
    assert any("cached network output" in e.message for e in third)  # the card's input again: cached


def test_z_stack_with_a_2d_model(tf_pool, tiny):
    vol = np.stack([_blobs((64, 64), n=3, seed=0)] * 4)
    res = tf_pool.run("stardist.predict", {"image": vol, "model": card_dict(tiny), "axes": "ZYX",
                                           "prob_thresh": 0.2, "stitch_z": True})
    assert res.labels.shape == vol.shape and res.frames == [0, 1, 2, 3]
    assert "frame" not in res.table and "centroid_z" in res.table
    assert any("slice by slice" in w for w in res.warnings)
    flat = tf_pool.run("stardist.predict", {"image": vol, "model": card_dict(tiny), "axes": "ZYX",
                                            "prob_thresh": 0.2})
    assert flat.n_objects > 0 and res.n_objects * 4 == flat.n_objects  # identical slices: each stitched 4 deep


def test_threshold_change_reuses_network_output(tf_pool, tiny):
    img = _blobs((256, 256))
    first, second = [], []
    r1 = tf_pool.run("stardist.predict", {"image": img, "model": card_dict(tiny), "prob_thresh": 0.5},
                     on_event=first.append)
    r2 = tf_pool.run("stardist.predict", {"image": img, "model": card_dict(tiny), "prob_thresh": 0.2},
                     on_event=second.append)
    assert not any("cached" in e.message for e in first)
    assert any("cached network output" in e.message for e in second)
    assert r2.timings["network_s"] < 0.05
    assert r2.n_objects >= r1.n_objects  # a lower threshold keeps at least as many candidates


def test_stack_frame_by_frame(tf_pool, tiny):
    stack = np.stack([_blobs(seed=s) for s in range(3)])
    events = []
    res = tf_pool.run("stardist.predict", {"image": stack, "model": card_dict(tiny), "axes": "TYX"},
                      on_event=events.append)
    assert res.labels.shape == stack.shape
    assert "frame" in res.table and set(res.table["frame"].tolist()) <= {0, 1, 2}
    assert any("frame 3/3" in e.message for e in events)
    sets = [set(np.unique(res.labels[i]).tolist()) - {0} for i in range(3)]
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    assert set(res.table["label"].tolist()) == sets[0] | sets[1] | sets[2]
    part = tf_pool.run("stardist.predict", {"image": stack, "model": card_dict(tiny), "axes": "TYX", "frames": [1]})
    assert not part.labels[0].any() and not part.labels[2].any()


@pytest.mark.parametrize("image, axes, message", [
    (np.zeros((64, 64, 3), np.uint8) + 7, "YXC", "expects a single-channel"),
    (np.zeros((2, 2, 2, 2, 2), np.uint8), None, "cannot tell the axis order"),
    (np.zeros((64, 64), np.uint8), "QX", "unknown axis order"),
    (np.zeros((4, 4), np.uint8), None, "too small"),
    (np.zeros((64, 64), dtype=object), None, "must hold numbers"),
    (np.zeros((0, 64), np.uint8), None, "empty"),
])
def test_bad_input_is_a_clear_error(tf_pool, tiny, image, axes, message):
    with pytest.raises(JobError, match=message) as ei:
        tf_pool.run("stardist.predict", {"image": image, "model": card_dict(tiny), "axes": axes})
    assert ei.value.kind == "InputError"


def test_rgb_model_rejects_grayscale(tf_pool, tiny_models):
    rgb_model = tiny_models["rgb"]
    with pytest.raises(JobError, match="expects a 3-channel"):
        tf_pool.run("stardist.predict", {"image": _blobs(), "model": card_dict(rgb_model)})
    res = tf_pool.run("stardist.predict", {"image": np.stack([_blobs()] * 3, -1), "model": card_dict(rgb_model)})
    assert res.labels.shape == (128, 160)


def test_constant_and_nan_images(tf_pool, tiny):
    res = tf_pool.run("stardist.predict", {"image": np.full((64, 64), 5, np.uint8), "model": card_dict(tiny),
                                           "prob_thresh": 0.99})
    assert res.n_objects == 0 and not res.labels.any()
    img = _blobs().astype(np.float32)
    img[:5, :5] = np.nan
    img[10, 10] = np.inf
    res = tf_pool.run("stardist.predict", {"image": img, "model": card_dict(tiny)})
    assert any("26 NaN/inf" in w for w in res.warnings)


def test_corrupt_and_missing_model_folders(tf_pool, tiny, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    (bad / "weights_best.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(JobError, match="cannot load the StarDist model") as ei:
        tf_pool.run("stardist.predict", {"image": _blobs(), "model": card_dict(bad)})
    assert ei.value.kind == "CorruptModel"
    (bad / "weights_best.h5").unlink()
    with pytest.raises(JobError, match="has no weights"):
        tf_pool.run("stardist.predict", {"image": _blobs(), "model": card_dict(bad)})
    (bad / "config.json").write_text("{")
    from napari_cnnvision.core.registry import CorruptModel, read_card

    with pytest.raises(CorruptModel, match="cannot read the StarDist config"):
        read_card(bad)


def test_polygons_for_2d(tf_pool, tiny):
    res = tf_pool.run("stardist.predict", {"image": _blobs((256, 256), n=10), "model": card_dict(tiny),
                                           "prob_thresh": 0.2, "return_polygons": True})
    assert len(res.polygons) == res.n_objects
    for poly, cy, cx in zip(res.polygons, res.table["centroid_y"], res.table["centroid_x"]):
        assert poly.shape == (8, 2)  # n_rays vertices (y, x)


def test_3d_model_on_the_3d_sample(tf_pool, tiny_models):
    model = tiny_models["3d"]
    vol = load_sample("nuclei_3d")[:16, :64, :64]
    res = tf_pool.run("stardist.predict", {"image": vol, "model": card_dict(model), "prob_thresh": 0.3})
    assert res.labels.shape == vol.shape
    assert {"centroid_z", "centroid_y", "centroid_x"} <= set(res.table)
    assert set(res.table["label"].tolist()) == set(np.unique(res.labels)) - {0}


def test_tta_and_border_options_check_their_input(tf_pool, tiny, tiny_models):
    res = tf_pool.run("stardist.predict", {"image": _blobs(), "model": card_dict(tiny), "prob_thresh": 0.2,
                                           "tta": True})
    assert res.tta and res.labels.shape == (128, 160)
    with pytest.raises(JobError, match="exclude_border must be >= 0"):
        tf_pool.run("stardist.predict", {"image": _blobs(), "model": card_dict(tiny), "exclude_border": -1})
    model3d = tiny_models["3d"]
    with pytest.raises(JobError, match="2D StarDist models only"):
        tf_pool.run("stardist.predict", {"image": np.zeros((8, 32, 32), np.float32), "model": card_dict(model3d),
                                         "tta": True})


def test_area_tiles_sample_large_images_by_area():
    from napari_cnnvision.backends.stardist.train import area_tiles

    big = np.arange(603 * 1272).reshape(603, 1272)
    small = np.ones((256, 300))
    xs, ys = area_tiles([big, small], [big % 7, small], (256, 256))
    assert len(xs) == 2 * 4 + 1  # 603 // 256 = 2 rows, 1272 // 256 = 4 columns; the small image stays whole
    assert all(x.shape == y.shape and min(x.shape) >= 256 for x, y in zip(xs, ys))
    assert sum(x.size for x in xs[:8]) == big.size  # the tiles cover the image exactly once
    assert np.array_equal(np.block([xs[0:4], xs[4:8]]), big)
    assert xs[8].shape == small.shape


def test_zoom_augmentation_keeps_patch_shape_and_labels():
    from napari_cnnvision.backends.stardist.train import _augment, zoom_patch

    x = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    y = np.zeros((64, 80), np.int32)
    y[20:40, 10:30] = 1  # 20 x 20
    y[50:60, 60:76] = 2
    zx, zy = zoom_patch(x, y, (1.25, 0.8))  # taller and narrower, centre-cropped / padded back
    assert zx.shape == x.shape and zy.shape == y.shape and zy.dtype == y.dtype
    assert (zy == 1).sum() == 25 * 16
    assert set(np.unique(zy)) <= {0, 1, 2}  # nearest neighbour: no new or blended labels
    zx, zy = zoom_patch(x, y, (0.5, 0.5))  # zoom-out: the border is background in both
    assert (zy[:16] == 0).all() and np.allclose(zx[:16], x.min()) and (zy == 1).sum() == 100
    rgb, _ = zoom_patch(np.stack([x] * 3, -1), y, (1.1, 0.9))
    assert rgb.shape == (64, 80, 3)
    np.random.seed(1)
    sizes = {int((_augment(x, y, 0.25)[1] == 1).sum()) for _ in range(20)}
    assert len(sizes) > 5 and min(sizes) >= 0.64 * 400 * 0.99 and max(sizes) <= 1.5625 * 400 * 1.01
    assert {int((_augment(x, y)[1] == 1).sum()) for _ in range(5)} == {400}  # off by default


def test_train_job_fine_tunes_into_a_loadable_model(tf_pool, tmp_path):
    images = [_blobs((192, 192), n=8, seed=s) for s in range(4)] + [_blobs((256, 600), n=20, seed=9)]
    from scipy import ndimage as ndi

    masks = [ndi.label(im > 60)[0].astype(np.uint16) for im in images]  # blobs: pixels lifted above the noise
    events = []
    settings = {"n_rays": 8, "patch_size": (96, 96), "batch_size": 2, "epochs": 2, "steps_per_epoch": 3,
                "unet_n_depth": 2, "unet_n_filter_base": 8, "area_sampling": True, "reduce_lr_patience": 5,
                "scale_augment": 0.2, "save_every": 1}
    res = tf_pool.run("stardist.train", {"images": images[1:], "masks": masks[1:], "val_images": images[:1],
                                         "val_masks": masks[:1], "basedir": str(tmp_path), "name": "mini",
                                         "settings": settings}, on_event=events.append)
    assert res.epochs_run == 2 and len(res.history["loss"]) == 2
    assert [e.message for e in events if e.message.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    folder = tmp_path / "mini"
    assert {"config.json", "weights_best.h5", "thresholds.json", "training.json", "weights_e001.h5",
            "weights_e002.h5"} <= {p.name for p in folder.iterdir()}
    assert 0 < res.thresholds["prob"] < 1
    out = tf_pool.run("stardist.predict", {"image": images[0], "model": card_dict(folder)})
    assert out.labels.shape == images[0].shape

    # package_stardist.py: compares the saved epochs on val, records this stage after the previous model's
    import json
    import subprocess
    import sys
    from pathlib import Path

    import tifffile

    from napari_cnnvision.core.registry import read_card, shipped_models_dir

    data = tmp_path / "data"
    for sub in ("images", "masks", "splits"):
        (data / sub).mkdir(parents=True)
    tifffile.imwrite(data / "images" / "v.tif", images[0].astype(np.uint8))
    tifffile.imwrite(data / "masks" / "v.tif", masks[0])
    (data / "splits" / "val.txt").write_text("v\n")
    (tmp_path / "train_stardist.log").write_text(
        "[10:00:00] epoch 1/2 epoch=1 seconds=3.5 loss=1 val_loss=0.9\n"
        "[10:00:04] epoch 2/2 epoch=2 seconds=7.25 loss=0.8 val_loss=0.95\n")
    previous = shipped_models_dir() / "nuclei-stardist" / "model.json"
    dest = tmp_path / "models" / "mini"
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    # both scripts in one interpreter (one TensorFlow import instead of two), as a user runs them in turn;
    # the training's thresholds kept (the threshold search of package_stardist.py: test_stardist_torch.py)
    steps = [(["--run", str(folder), "--weights", "weights_e001.h5", "weights_e002.h5"], "average_stardist_weights.py"),
             (["--run", str(folder), "--data", str(data), "--dest", str(dest), "--candidates", "weights_e001.h5",
               "weights_e002.h5", "weights_avg.h5", "--previous-card", str(previous), "--command",
               "tiny run --scale-aug 0.2", "--keep-thresholds"], "package_stardist.py")]
    code = ("import runpy, sys\n"
            f"for argv, script in {steps!r}:\n"
            "    sys.argv = [script] + argv\n"
            "    try:\n"
            f"        runpy.run_path({str(scripts)!r} + '/' + script, run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert not e.code, (script, e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    w = {f: _h5_weights(folder / f) for f in ("weights_e001.h5", "weights_e002.h5", "weights_avg.h5")}
    assert [a.shape for a in w["weights_avg.h5"]] == [a.shape for a in w["weights_e001.h5"]]
    res = {"diff": max(float(np.abs(c - (a + b) / 2).max()) for a, b, c in zip(*w.values())),
           "spread": max(float(np.abs(a - b).max()) for a, b in zip(w["weights_e001.h5"], w["weights_e002.h5"]))}
    assert res["spread"] > 1e-4 and res["diff"] < 1e-6  # the two epochs differ; the file is their mean
    for cand in ("weights_e001.h5", "weights_e002.h5", "weights_avg.h5"):  # all compared on val
        assert f"{cand} val IoU 0.5" in out.stdout
    card = read_card(dest, "user")
    prev = json.loads(previous.read_text())
    stages = card.training["stages"]
    assert len(stages) == len(prev["training"]["stages"]) + 1
    last = stages[-1]
    chosen = out.stdout.split("chosen: ")[1].split()[0]
    assert last["scale_augment"] == 0.2 and last["weights"].startswith(chosen)
    if chosen != "weights_avg.h5":
        assert last["weights_epoch"] == int(chosen[9:12])
    else:
        assert last["weights"] == "weights_avg.h5: the mean of weights_e001.h5, weights_e002.h5"
        assert "weights_epoch" not in last
    assert last["epochs"] == 2 and last["best_epoch (lowest val loss)"] == 1  # from the log
    assert last["seconds"] == json.loads((folder / "training.json").read_text())["seconds"]  # measured
    assert str(prev["metrics"]["val"]["ap@0.5"]) in last["init"]
    assert card.training["command"].split(" && ")[-2] == "tiny run --scale-aug 0.2"
    assert card.training["epochs_run"] == prev["training"]["epochs_run"] + 2
    assert 0 <= card.metrics["val"]["ap@0.5"] <= 1 and card.metrics["val"]["n_images"] == 1
    assert {"config.json", "weights_best.h5", "thresholds.json", "model.json"} <= {p.name for p in dest.iterdir()}


def _h5_weights(path):
    """The weight arrays of a Keras (legacy HDF5) weights file in the order Keras loads them
    (``layer_names``, then each layer's ``weight_names``), read with h5py: no TensorFlow here."""
    import h5py

    def txt(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    with h5py.File(path, "r") as f:
        arrays = [np.asarray(f[txt(layer)][txt(name)])
                  for layer in f.attrs["layer_names"] for name in f[txt(layer)].attrs.get("weight_names", [])]
    assert arrays, f"no weights in {path}"
    return arrays
