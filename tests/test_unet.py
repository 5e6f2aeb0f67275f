"""The PyTorch U-Net backend: architecture, targets, tiled inference, checkerboard
artefacts, model folders (incl. corrupt ones), input checks, stacks, training.

Everything runs on small synthetic images (random disks + noise) with tiny networks on
one CPU thread.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cnnvision.backends.evaluate import score_segmentations  # noqa: E402
from napari_cnnvision.backends.unet.io import (load_model, read_config, save_model,  # noqa: E402
                                               thresholds_of)
from napari_cnnvision.backends.unet.model import (UNetConfig, build_unet, checkerboard_amplitude,  # noqa: E402
                                                  checkerboard_energy)
from napari_cnnvision.backends.unet.predict import predict_job, predict_probs, segment, tile_plan  # noqa: E402
from napari_cnnvision.backends.unet.targets import (BOUNDARY, INTERIOR, instances_from_probs,  # noqa: E402
                                                    labels_to_target)
from napari_cnnvision.backends.unet.train import SEED_GRID, UNetTrainSettings, train_unet  # noqa: E402
from napari_cnnvision.core.axes import InputError  # noqa: E402
from napari_cnnvision.core.progress import Cancelled, RecordingProgress  # noqa: E402
from napari_cnnvision.core.registry import CorruptModel, ModelRegistry, read_card  # noqa: E402

torch.set_num_threads(1)


def make_disks(shape, n, rng, rmin=5.0, rmax=9.0, noise=0.15, gap=0.0):
    """Up to ``n`` random non-overlapping (possibly touching) disks + gradient + noise."""
    h, w = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    placed = []
    for _ in range(n * 30):
        if len(placed) >= n:
            break
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        if any(np.hypot(cy - y, cx - x) < r + rr + gap for y, x, rr in placed):
            continue
        placed.append((cy, cx, r))
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(placed)
    bright = rng.uniform(0.6, 1.0, len(placed) + 1)
    img = 0.2 * yy / h + (labels > 0) * bright[labels] + rng.normal(0, noise, shape)
    return img.astype(np.float32), labels


def ap_at(truths, preds, iou=0.5):
    return score_segmentations(truths, preds).at(iou)["ap"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net (depth 2, 8 filters) trained for 200 steps; its folder and card."""
    rng = np.random.default_rng(0)
    tr = [make_disks((96, 96), 14, rng) for _ in range(6)]
    va = [make_disks((96, 96), 14, rng) for _ in range(2)]
    s = UNetTrainSettings(epochs=4, steps_per_epoch=50, batch_size=4, patch_size=64, depth=2, base_filters=8,
                          learning_rate=3e-3, min_size=4, seed=0)
    prog = RecordingProgress()
    res = train_unet([a for a, _ in tr], [b for _, b in tr], [a for a, _ in va], [b for _, b in va],
                     tmp_path_factory.mktemp("unet-runs"), "tiny-unet", s, progress=prog, data="synthetic disks")
    return res, read_card(res.model_dir, "path"), prog


def copy_model(trained, dest):
    shutil.copytree(trained[0].model_dir, dest)
    return dest


# (1) architecture ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["nearest", "bilinear", "transposed"])
def test_each_upsampling_maps_input_to_three_classes(mode):
    torch.manual_seed(0)
    net = build_unet(UNetConfig(depth=3, base_filters=8, upsampling=mode)).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert torch.isfinite(out).all()
    kinds = {type(m).__name__ for m in net.modules()}
    assert ("ConvTranspose2d" in kinds) == (mode == "transposed")
    assert ("Upsample" in kinds) == (mode != "transposed")
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 60, 64))


def test_config_roundtrip_and_validation():
    c = UNetConfig(in_channels=3, depth=2, base_filters=4, upsampling="nearest", batch_norm=False)
    assert UNetConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert UNetConfig().upsampling == "bilinear"  # the default avoids checkerboard artefacts
    for bad in ({"upsampling": "pixelshuffle"}, {"depth": 0}, {"base_filters": 2.5}, {"batch_norm": "yes"}):
        with pytest.raises(ValueError):
            UNetConfig.from_dict(bad)
    net = build_unet(c)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


# targets -----------------------------------------------------------------------------
def test_targets_and_watershed_roundtrip():
    labels = np.zeros((40, 60), np.int32)
    labels[5:25, 5:25] = 1
    labels[5:25, 25:45] = 2  # touches object 1
    labels[28:38, 48:58] = 3
    t = labels_to_target(labels)
    assert t.dtype == np.uint8 and set(np.unique(t)) == {0, 1, 2}
    assert (t[labels == 0] == 0).all()
    assert t[15, 24] == BOUNDARY and t[15, 25] == BOUNDARY  # the two sides of the contact
    assert t[15, 15] == INTERIOR
    probs = np.eye(3, dtype=np.float32)[t].transpose(2, 0, 1)
    inst = instances_from_probs(probs, 0.5, 0.5, min_size=4)
    assert inst.dtype == np.int32 and inst.max() == 3 and set(np.unique(inst)) == {0, 1, 2, 3}
    assert ap_at([labels], [inst], 0.8) == 1.0
    assert not instances_from_probs(np.zeros((3, 20, 20), np.float32)).any()
    # a seed below min_size is dropped
    tiny = np.zeros((3, 20, 20), np.float32)
    tiny[1, 5:7, 5:7] = 1.0
    assert instances_from_probs(tiny, min_size=8).max() == 0
    assert instances_from_probs(tiny, min_size=4).max() == 1


# (2) training + full segment() path from a saved folder --------------------------------
def test_trained_tiny_unet_segments_held_out_disks(trained):
    res, card, prog = trained
    assert card.backend == "unet" and card.task == "segment" and card.classes == ["nucleus"]
    assert res.epochs_run == 4 and 1 <= res.best_epoch <= 4
    assert 0 < res.seconds < 600  # measured (wall time: a loaded machine took 310 s for this tiny run)
    epochs = [e for e in prog.events if "epoch" in e.metrics]
    assert [e.metrics["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all({"loss", "val_loss", "val_ap50"} <= set(e.metrics) for e in epochs)
    assert epochs[-1].metrics["loss"] < epochs[0].metrics["loss"]
    # the card records how the model was made and how good it is
    assert card.training["data"] == "synthetic disks" and card.training["epochs"] == 4
    assert {"command", "seconds"} <= set(card.training)
    assert set(card.metrics["val"]) >= {"ap@0.5", "ap@0.6", "ap@0.7", "ap@0.8", "ap@0.9", "f1@0.5", "n_images", "mean_ap"}
    cfg = read_config(card.path)
    assert min(SEED_GRID) <= cfg["thresholds"]["seed"] <= max(SEED_GRID) and cfg["thresholds"] == res.thresholds
    assert thresholds_of(card)["prob"] == cfg["thresholds"]["seed"]
    assert sorted(os.listdir(card.path)) == ["config.json", "model.json", "training.json", "weights.pt"]

    rng = np.random.default_rng(123)
    test = [make_disks((128, 128), 25, rng) for _ in range(3)]
    preds = []
    for img, _ in test:
        r = segment(img, card, return_polygons=True)
        assert r.labels.shape == img.shape and r.labels.dtype == np.uint16
        assert r.model == "tiny-unet" and r.prob_thresh == res.thresholds["seed"] and r.nms_thresh is None
        assert list(r.table) == ["label", "area", "centroid_y", "centroid_x", "probability"]
        assert r.n_objects == len(np.unique(r.labels)) - 1 == len(r.polygons)
        assert ((r.table["probability"] > 0.3) & (r.table["probability"] <= 1)).all()
        preds.append(r.labels)
    ap = ap_at([t for _, t in test], preds, 0.5)
    assert ap >= 0.8, ap


def test_registry_and_job_entry_points(trained, tmp_path, monkeypatch):
    _, card, _ = trained
    from napari_cnnvision.backends.dispatch import card_payload, job_for, run_model

    user = tmp_path / "models"
    copy_model(trained, user / "tiny-unet")
    reg = ModelRegistry(user_dir=user, shipped_dir=tmp_path / "none")
    assert [c.name for c in reg.list("segment") if c.backend == "unet"] == ["tiny-unet"]
    img, _ = make_disks((64, 80), 6, np.random.default_rng(5))
    by_name = segment(img, "tiny-unet", registry=reg)
    assert job_for(card) == "unet.predict"
    via_job = predict_job(RecordingProgress(), image=img, model=card_payload(card))
    via_dispatch = run_model(img, card)
    np.testing.assert_array_equal(by_name.labels, via_job.labels)
    np.testing.assert_array_equal(by_name.labels, via_dispatch.labels)
    # a lower seed threshold is a valid request, served from the probability cache: no network call
    from napari_cnnvision.backends.unet import predict as unet_predict

    hits = unet_predict._RAW.hits
    monkeypatch.setattr(unet_predict, "predict_probs", lambda *a, **k: pytest.fail("the network ran again"))
    prog = RecordingProgress()
    low = segment(img, card, prob_thresh=0.35, progress=prog)
    assert low.prob_thresh == 0.35 and unet_predict._RAW.hits == hits + 1
    assert "(cached network output)" in prog.events[-1].message
    assert low.n_objects > 0 and by_name.n_objects > 0
    with pytest.raises(InputError, match="between 0 and 1"):
        segment(img, card, prob_thresh=1.5)


# (3) tiled inference ------------------------------------------------------------------
def test_tiled_equals_untiled_and_odd_shapes(trained):
    _, card, _ = trained
    net = load_model(card.path).model
    img, _ = make_disks((300, 260), 60, np.random.default_rng(7))
    x = ((img - img.min()) / np.ptp(img))[None].astype(np.float32)
    blocks, window, margin = tile_plan((300, 260), 2, tile_size=96, overlap=32)
    assert window == (96, 96) and margin == 32 and len(blocks) == 10 * 9
    whole = predict_probs(net, x, tile_size=None)
    tiled = predict_probs(net, x, tile_size=96, overlap=32)
    assert np.abs(whole - tiled).max() < 1e-4
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    # the full path: small tiles vs one tile
    a = segment(img, card, n_tiles=None).labels
    b = segment(img, card, tile_size=96, tile_overlap=32).labels
    c = segment(img, card, n_tiles=(3, 2)).labels
    assert (a == b).mean() > 0.999 and (a == c).mean() > 0.999
    assert ap_at([a], [b], 0.9) == 1.0 and ap_at([a], [c], 0.9) == 1.0
    # shapes that are not multiples of 2**depth (and smaller than a tile)
    for shape in [(203, 117), (9, 31), (67, 8)]:
        img2, _ = make_disks(shape, 8, np.random.default_rng(1), rmin=3, rmax=4)
        r = segment(img2, card)
        assert r.labels.shape == shape
    img3, truth3 = make_disks((203, 117), 20, np.random.default_rng(2))
    r = segment(img3, card, tile_size=64, tile_overlap=16)
    assert r.labels.shape == (203, 117) and ap_at([truth3], [r.labels], 0.5) >= 0.8
    with pytest.raises(InputError, match="too small for an overlap"):
        segment(img3, card, tile_size=32, tile_overlap=16)


# (4) checkerboard artefacts -----------------------------------------------------------
def test_transposed_conv_checkerboard_on_constant_image():
    """A stride-2 transposed convolution gives each output pixel one kernel tap picked by
    (y mod 2, x mod 2), so a freshly initialised transposed-conv U-Net turns a constant
    image into a period-2 pattern: all of its output's spatial variation sits at the
    Nyquist frequencies. Resampling (nearest/bilinear) followed by a 3x3 convolution keeps
    a constant constant. How the package handles it: the default upsampling is
    "bilinear"; "transposed" is only an option (``benchmarks/bench_unet_upsampling.py``
    prints the figures before and after training).
    """
    const = torch.full((1, 1, 128, 128), 0.5)
    crop = 40  # ignore the border, where zero padding makes the output vary
    res = {}
    for mode in ("nearest", "bilinear", "transposed"):
        torch.manual_seed(0)
        net = build_unet(UNetConfig(depth=3, base_filters=8, upsampling=mode)).eval()
        with torch.inference_mode():
            out = net(const)[0].numpy()
        res[mode] = (checkerboard_energy(out, crop), checkerboard_amplitude(out, crop))
    assert res["transposed"][0] > 0.9  # (nearly) all variation is period 2
    assert res["transposed"][1] > 1e-5
    for mode in ("nearest", "bilinear"):
        assert res[mode][0] < 0.01 and res[mode][1] < 1e-7, (mode, res[mode])
    # the measure itself: a pure checkerboard is 1, a smooth ramp ~0
    yy, xx = np.mgrid[:32, :32]
    assert checkerboard_energy((-1.0) ** (yy + xx)) == pytest.approx(1.0)
    assert checkerboard_energy(yy / 32 + 1) < 0.01


# (5) model folders --------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('UNET_PWNED', '/tmp/unet-test-pwned')}",))


def _corrupt(folder, kind):
    w = folder / "weights.pt"
    if kind == "garbage":
        w.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif kind == "empty":
        w.write_bytes(b"")
    elif kind == "pickle":
        w.write_bytes(pickle.dumps(_Evil()))
    elif kind == "torch-object":
        torch.save({"model": _Evil()}, w)
    elif kind == "not-a-state-dict":
        torch.save([torch.zeros(3)], w)
    elif kind == "missing":
        w.unlink()
    elif kind == "wrong-architecture":
        torch.save(build_unet(UNetConfig(depth=3, base_filters=8)).state_dict(), w)
    elif kind == "nan":
        sd = torch.load(w, weights_only=True)
        next(v for k, v in sd.items() if k.endswith("weight")).fill_(float("nan"))
        torch.save(sd, w)
    elif kind == "bad-config":
        (folder / "config.json").write_text(json.dumps({"unet": {"upsampling": "magic"}}))
    elif kind == "config-garbage":
        (folder / "config.json").write_text("{not json")


MESSAGES = {"garbage": "cannot read the weights", "truncated": "cannot read the weights",
            "empty": "cannot read the weights", "pickle": "cannot read the weights",
            "torch-object": "cannot read the weights", "not-a-state-dict": "does not hold a state_dict",
            "missing": "has no weights.pt", "wrong-architecture": "do not fit the U-Net",
            "nan": "NaN/inf", "bad-config": "config .* is invalid", "config-garbage": "cannot read"}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_corrupt_model_folders_are_clear_errors(trained, tmp_path, monkeypatch, kind):
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("UNET_PWNED", str(pwned))
    folder = copy_model(trained, tmp_path / f"broken-{kind}")
    load_model(folder)  # fine (and now cached)
    _corrupt(folder, kind)
    with pytest.raises(CorruptModel, match=MESSAGES[kind]) as ei:
        load_model(folder)
    assert str(folder) in str(ei.value)
    assert not pwned.exists()  # nothing was unpickled
    card = read_card(folder, "path")
    with pytest.raises(CorruptModel):
        segment(np.zeros((32, 32), np.float32), card)


def test_save_is_atomic_and_cache_follows_changes(trained, tmp_path):
    folder = copy_model(trained, tmp_path / "m")
    first = load_model(folder)
    assert load_model(folder) is first  # cached
    cfg = first.config
    other = build_unet(cfg)
    save_model(folder, other, cfg, thresholds={"seed": 0.42})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp/old folders left
    again = load_model(folder)
    assert again is not first and again.thresholds["seed"] == 0.42
    for k, v in other.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)
    assert json.loads((folder / "model.json").read_text())["backend"] == "unet"
    # a failing save leaves the old folder untouched
    with pytest.raises(ValueError):
        save_model(folder, other, cfg, extra_files={"../escape.txt": "x"})
    assert load_model(folder).thresholds["seed"] == 0.42
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# (6) input checks ----------------------------------------------------------------------
def test_input_errors_and_empty_images(trained):
    _, card, _ = trained
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InputError, match=r"expects a single-channel.*\(3 channels\)"):
        segment(rgb, card, axes="YXC")
    with pytest.raises(InputError, match="expects a single-channel"):
        segment(np.random.rand(64, 64, 3), card)  # guessed as RGB
    with pytest.raises(InputError, match="unknown axis order"):
        segment(np.zeros((64, 64)), card, axes="QX")
    with pytest.raises(InputError, match="do not match"):
        segment(np.zeros((64, 64)), card, axes="TYX")
    with pytest.raises(InputError, match="axes= argument"):
        segment(np.zeros((2, 3, 4, 64, 64)), card)
    with pytest.raises(InputError, match="too small"):
        segment(np.zeros((5, 64)), card)
    with pytest.raises(InputError, match="must hold numbers"):
        segment(np.array([["a"] * 10] * 10), card)
    with pytest.raises(InputError, match="n_tiles"):
        segment(np.zeros((64, 64)), card, n_tiles=(2, 2, 2))
    for img in (np.zeros((64, 64), np.uint16), np.full((50, 70), 7.0, np.float32)):
        r = segment(img, card)
        assert r.n_objects == 0 and not r.labels.any() and r.labels.shape == img.shape
        assert any("constant" in w for w in r.warnings)
    img, truth = make_disks((96, 96), 12, np.random.default_rng(3))
    img[:3, :3] = np.nan
    img[50, 50] = np.inf
    r = segment(img, card)
    assert any("10 NaN/inf" in w for w in r.warnings)
    assert ap_at([truth], [r.labels]) >= 0.8


# (7) stacks ---------------------------------------------------------------------------
def test_stack_frame_by_frame(trained):
    _, card, _ = trained
    rng = np.random.default_rng(11)
    pairs = [make_disks((80, 72), 8, rng) for _ in range(3)]
    stack = np.stack([p[0] for p in pairs])
    prog = RecordingProgress()
    r = segment(stack, card, progress=prog)
    assert r.labels.shape == stack.shape
    assert list(r.table)[0] == "frame"
    seen = set()
    for f in range(3):
        single = segment(stack[f], card).labels
        mask = single > 0
        np.testing.assert_array_equal(r.labels[f] > 0, mask)
        shift = np.unique(r.labels[f][mask].astype(np.int64) - single[mask])
        assert len(shift) == 1  # the same objects, labels shifted to stay unique in the stack
        labels_f = set(np.unique(r.labels[f][mask]).tolist())
        assert not (labels_f & seen)
        seen |= labels_f
        assert (r.table["frame"] == f).sum() == single.max()
    msgs = [e.message for e in prog.events]
    assert any(m.startswith("frame 3/3") for m in msgs) and prog.events[-1].fraction == 1.0
    # only some frames
    r1 = segment(stack, card, frames=[1])
    assert not r1.labels[0].any() and not r1.labels[2].any() and r1.labels[1].any()
    assert set(r1.table["frame"].tolist()) == {1}
    # polygons of a stack carry the frame
    rp = segment(stack, card, return_polygons=True)
    assert len(rp.polygons) == rp.n_objects and rp.polygons[0].shape[1] == 3
    # a stop request between frames cancels the job
    with pytest.raises(Cancelled):
        segment(stack + 1.0, card, progress=RecordingProgress(stop_after=2))


def test_the_model_card_decides_the_normalization(trained, tmp_path, monkeypatch):
    """The card's percentiles (here 0 / 100) are what the network sees, unless pmin/pmax are given."""
    from napari_cnnvision.backends.unet import predict as unet_predict
    from napari_cnnvision.core.normalize import percentile_normalize

    folder = copy_model(trained, tmp_path / "card-0-100")
    meta = json.loads((folder / "model.json").read_text())
    meta["normalization"] = {"type": "percentile", "pmin": 0.0, "pmax": 100.0}
    (folder / "model.json").write_text(json.dumps(meta))
    card = read_card(folder, "path")
    img, _ = make_disks((64, 64), 6, np.random.default_rng(21))
    img[3, 3] = 40.0  # one hot pixel: 0/100 and 1/99.8 percentiles differ a lot
    seen = []
    real = unet_predict.predict_probs

    def spy(model, x, *a, **k):
        seen.append(np.array(x))
        return real(model, x, *a, **k)

    monkeypatch.setattr(unet_predict, "predict_probs", spy)
    res = segment(img, card)
    assert res.normalization == {"type": "percentile", "pmin": 0.0, "pmax": 100.0, "source": "card"}
    np.testing.assert_allclose(seen[-1][0], percentile_normalize(img, 0.0, 100.0))
    over = segment(img, card, pmin=1.0, pmax=99.8)  # an explicit choice overrides the card
    assert over.normalization == {"type": "percentile", "pmin": 1.0, "pmax": 99.8, "source": "caller"}
    np.testing.assert_allclose(seen[-1][0], percentile_normalize(img, 1.0, 99.8))
    assert np.abs(seen[0] - seen[1]).max() > 0.1
    assert res.n_objects < over.n_objects  # the hot pixel squashes the 0/100 input: fewer objects found
    meta["normalization"] = {"type": "zscore"}
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptModel, match="normalization type 'zscore' is unknown"):
        segment(img, read_card(folder, "path"))


def _balls(shape, n, rng, radius=7.0):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.int32)
    centres = []
    while len(centres) < n:
        c = (rng.uniform(radius, shape[0] - radius), *rng.uniform(radius + 1, np.array(shape[1:]) - radius - 1))
        if all(np.hypot(*(np.subtract(c, o)[1:])) > 2 * radius + 3 for o in centres):
            centres.append(c)
            labels[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius ** 2] = len(centres)
    img = (labels > 0) * 0.9 + 0.1 + rng.normal(0, 0.1, shape)
    return img.astype(np.float32), labels


def test_z_stack_with_a_2d_model_slice_by_slice_and_stitched(trained):
    _, card, _ = trained
    vol, truth = _balls((18, 64, 64), 3, np.random.default_rng(2))
    guessed = segment(vol, card)  # unchanged guess: a 3-D array is a time-lapse for a 2D model
    assert "frame" in guessed.table and guessed.frames == list(range(18))
    flat = segment(vol, card, axes="ZYX")
    assert "frame" not in flat.table and "centroid_z" in flat.table and flat.labels.shape == vol.shape
    assert any("slice by slice" in w and "stitch_z=True" in w for w in flat.warnings)
    assert flat.n_objects >= 3 * 8  # each ball counted in many slices
    stitched = segment(vol, card, axes="ZYX", stitch_z=True, return_polygons=True)
    assert stitched.n_objects == 3, stitched.table
    assert any("stitched" in w for w in stitched.warnings)
    for k in range(1, 4):  # each 3-D object is one ball
        ids, counts = np.unique(stitched.labels[truth == k], return_counts=True)
        assert counts[ids > 0].max() > 0.8 * (truth == k).sum()
    assert stitched.polygons and all(p.shape[1] == 3 for p in stitched.polygons)  # (z, y, x) outlines
    part = segment(vol, card, axes="ZYX", frames=[9])
    assert part.frames == [9] and not part.labels[8].any() and part.labels[9].any()
    t = segment(np.stack([vol, vol]), card, axes="TZYX", stitch_z=True)
    assert t.labels.shape == (2,) + vol.shape and t.table["frame"].tolist() == [0, 0, 0, 1, 1, 1]


def test_stop_request_ends_training_after_the_epoch(tmp_path):
    rng = np.random.default_rng(4)
    data = [make_disks((64, 64), 6, rng) for _ in range(3)]
    s = UNetTrainSettings(epochs=10, steps_per_epoch=2, batch_size=2, patch_size=32, depth=1, base_filters=4,
                          seed_grid=(0.5,))
    prog = RecordingProgress(stop_after=2)  # "preparing" + epoch 1
    res = train_unet([d[0] for d in data[:2]], [d[1] for d in data[:2]], [data[2][0]], [data[2][1]],
                     tmp_path, "stopped", s, progress=prog)
    assert res.stopped and res.epochs_run == 1 and res.best_epoch == 1
    card = read_card(res.model_dir, "path")
    assert card.training["stopped_early"] is True
    segment(data[2][0], card)  # the kept model works


def test_fine_tuning_keeps_the_architecture_of_the_initial_model(trained, tmp_path):
    _, card, _ = trained
    rng = np.random.default_rng(6)
    data = [make_disks((64, 64), 6, rng) for _ in range(3)]
    s = UNetTrainSettings(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, depth=4, base_filters=32,
                          learning_rate=1e-4, seed_grid=(0.5,))
    res = train_unet([d[0] for d in data[:2]], [d[1] for d in data[:2]], [data[2][0]], [data[2][1]],
                     tmp_path, "tuned", s, init_folder=card.path)
    tuned = read_config(res.model_dir)["unet"]
    assert tuned == read_config(card.path)["unet"]  # depth 2 / 8 filters, not the settings' 4 / 32
    assert read_card(res.model_dir, "path").training["init_folder"] == card.path
    rgb = [np.stack([d[0]] * 3, -1) for d in data]  # RGB data, 1-channel base: the first conv is adapted
    res = train_unet(rgb[:2], [d[1] for d in data[:2]], rgb[2:], [data[2][1]], tmp_path, "x", s,
                     init_folder=card.path)
    assert read_config(res.model_dir)["unet"]["in_channels"] == 3
    assert read_card(res.model_dir, "path").training["channel_adaptation"]  # recorded in the card



def test_a_fine_tune_that_does_not_beat_its_base_keeps_the_base(trained, tmp_path):
    """The base competes as "epoch 0": a run whose epochs are all worse on val hands back the base."""
    from napari_cnnvision.backends.training.outcome import job_outcome

    _, card, _ = trained
    rng = np.random.default_rng(6)
    data = [make_disks((64, 64), 6, rng) for _ in range(3)]
    s = UNetTrainSettings(epochs=2, steps_per_epoch=2, batch_size=2, patch_size=32, learning_rate=10.0,
                          seed_grid=(0.5,))  # a learning rate that wrecks the network
    res = train_unet([d[0] for d in data[:2]], [d[1] for d in data[:2]], [data[2][0]], [data[2][1]],
                     tmp_path, "wrecked", s, init_folder=card.path)
    assert res.epochs_run == 2 and res.best_epoch == 0 and res.kept_base
    assert min(res.history["val_ap50"]) < 0.5 <= read_card(res.model_dir, "path").metrics["val"]["ap@0.5"]
    base, new = load_model(card.path, use_cache=False).model, load_model(res.model_dir, use_cache=False).model
    x = data[2][0][None].astype(np.float32)
    assert np.allclose(predict_probs(base, x), predict_probs(new, x), atol=1e-5)
    text = job_outcome(res, "wrecked", "segment").describe()
    assert "keeps the base's weights (thresholds re-chosen)" in text and "best epoch" not in text

def test_modules_do_not_import_torch_on_import():
    code = ("import sys, napari_cnnvision.backends.unet, napari_cnnvision.backends.unet.predict, "
            "napari_cnnvision.backends.unet.io, napari_cnnvision.backends.unet.targets; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_train_and_predict_jobs_in_the_compute_worker(pool, trained):
    """The real path: both jobs run in the torch worker process; results come back."""
    from napari_cnnvision.backends.dispatch import card_payload

    _, card, _ = trained
    rng = np.random.default_rng(8)
    data = [make_disks((64, 64), 6, rng) for _ in range(3)]
    events = []
    res = pool.run("unet.train", {"images": [d[0] for d in data[:2]], "masks": [d[1] for d in data[:2]],
                                  "val_images": [data[2][0]], "val_masks": [data[2][1]], "name": "from-worker",
                                  "settings": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "patch_size": 32,
                                               "depth": 1, "base_filters": 4, "seed_grid": [0.5]}},
                   on_event=events.append)
    assert res.epochs_run == 2 and [e.metrics.get("epoch") for e in events if "epoch" in e.metrics] == [1, 2]
    reg = ModelRegistry(shipped_dir=os.devnull)  # the user folder (NAPARI_CNNVISION_DATA_DIR)
    assert reg.get("from-worker").path == res.model_dir
    img, _ = make_disks((96, 96), 12, np.random.default_rng(9))
    remote = pool.run("unet.predict", {"image": img, "model": card_payload(card), "return_polygons": True})
    local = segment(img, card, return_polygons=True)
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.n_objects == local.n_objects > 0 and len(remote.polygons) == remote.n_objects
