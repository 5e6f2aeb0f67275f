"""The PyTorch StarDist training path must be StarDist's: the same targets, network and loss.

Checked against ``stardist`` itself on its bundled sample image: training targets
(``star_dist``, ``edt_prob``, ``fill_label_holes``), the network (weights moved between the
torch module and a ``StarDist2D`` Keras model give the same outputs), the loss (stardist's own
Keras loss functions), and a tiny training run whose exported folder the plugin segments with.
TensorFlow and torch are used together only in subprocesses.
"""
import json
from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from stardist import fill_label_holes as sd_fill
from stardist import data as sd_data
from stardist.geometry import star_dist as sd_star_dist
from stardist.utils import edt_prob as sd_edt_prob

torch = pytest.importorskip("torch")
EXPORT = Path(__file__).resolve().parents[1] / "scripts" / "export_stardist_torch.py"

from napari_cnnvision.backends.stardist import torch_train as T  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    x, y = sd_data.test_image_nuclei_2d(return_mask=True)
    return x, y.astype(np.int32)


def _crops(y):
    # a full-size crop, an odd-sized one and one whose objects are cut by every edge
    return [y[:128, :128], y[37:160, 101:190], y[200:263, 300:411]]


@pytest.mark.parametrize("grid", [1, 2])
def test_star_dist_matches_stardist(sample, grid):
    _, y = sample
    for crop in _crops(y):
        crop = np.ascontiguousarray(crop)
        ref = sd_star_dist(crop, 32, grid=(grid, grid))
        for max_steps in (None, T.max_ray_steps(crop[None])):
            got = T.star_dist(torch.from_numpy(crop)[None], 32, grid, max_steps=max_steps)[0]
            got = got.permute(1, 2, 0).numpy()
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() < 1e-4
    # a batch gives each image its own distances
    a, b = (np.ascontiguousarray(c[:80, :80]) for c in _crops(y)[:2])
    batch = T.star_dist(torch.from_numpy(np.stack([a, b])), 16, grid)
    assert np.abs(batch[1].permute(1, 2, 0).numpy() - sd_star_dist(b, 16, grid=(grid, grid))).max() < 1e-4


def test_star_dist_of_background_is_zero():
    out = T.star_dist(torch.zeros((2, 32, 32), dtype=torch.int32), 8, 2)
    assert out.shape == (2, 8, 16, 16) and float(out.abs().max()) == 0.0


def test_edt_prob_and_hole_filling_match_stardist(sample):
    _, y = sample
    holed = y.copy()
    holed[holed == 7] = np.where(np.arange(holed[holed == 7].size) % 5 == 2, 0, 7)  # holes in object 7
    assert (T.fill_label_holes(holed) == sd_fill(holed)).all()
    for crop in _crops(y):
        crop = np.ascontiguousarray(crop)
        assert np.abs(T.edt_prob(crop) - sd_edt_prob(crop)).max() < 1e-5
        assert np.abs(T.edt_prob(crop[::2, ::2]) - sd_edt_prob(crop[::2, ::2])).max() < 1e-5


def test_patch_sampler_gives_consistent_targets(sample):
    x, y = sample
    s = T.PatchSampler([x.astype(np.float32) / x.max()], [y], patch=64, grid=2, seed=3)
    xb, yb, pb, steps = s.batch(4)
    assert xb.shape == (4, 64, 64) and yb.shape == (4, 64, 64) and pb.shape == (4, 32, 32)
    assert yb.any(axis=(1, 2)).sum() >= 3  # foreground patches are preferred (p = 0.9)
    for lbl, prob in zip(yb, pb):
        assert np.allclose(prob, sd_edt_prob(lbl[::2, ::2]), atol=1e-5)
    # every ray ends within the bound given for the batch
    full = T.star_dist(torch.from_numpy(yb), 32, 1).numpy()
    assert full.max() < steps


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    last = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert last, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(last[-1])


def test_network_and_loss_equal_stardists_keras_model():
    res = _run("""
        import json, numpy as np, torch
        from stardist.models import Config2D, StarDist2D
        from stardist.models.base import masked_loss_mae
        from napari_cnnvision.backends.stardist import torch_train as T
        from napari_cnnvision.core.registry import shipped_models_dir
        rng = np.random.default_rng(0)
        res = {}
        for g in (1, 2):
            cfg = T.TorchStarDistConfig(grid=g, n_rays=16, unet_n_filter_base=8)
            km = StarDist2D(Config2D(**cfg.config2d_kwargs()), basedir=None).keras_model
            net = T.build_network(cfg).eval()
            assert [w.shape for w in km.get_weights()] == [w.shape for w in T.keras_weights(net)]
            km.set_weights(T.keras_weights(net))
            x = rng.random((2, 48, 64, 1)).astype(np.float32)
            kp, kd = km.predict(x, verbose=0)
            with torch.no_grad():
                pl, dp = net(torch.from_numpy(x).permute(0, 3, 1, 2))
            res[f"g{g}"] = [float(np.abs(kp - torch.sigmoid(pl).permute(0, 2, 3, 1).numpy()).max()),
                            float(np.abs(kd - dp.permute(0, 2, 3, 1).numpy()).max()), kp.shape[1:3] == (48 // g, 64 // g)]
        # the shipped model's trained weights, Keras -> torch
        m = StarDist2D(None, name="nuclei-stardist", basedir=str(shipped_models_dir()))
        net = T.build_network(T.TorchStarDistConfig(grid=2)).eval()
        T.load_keras_weights(net, m.keras_model.get_weights())
        from stardist.data import test_image_nuclei_2d
        x = test_image_nuclei_2d().astype(np.float32)[:128, :160]
        x = (x - np.percentile(x, 1)) / (np.percentile(x, 99.8) - np.percentile(x, 1))
        kp, kd = m.keras_model.predict(x[None, ..., None], verbose=0)
        with torch.no_grad():
            pl, dp = net(torch.from_numpy(x)[None, None])
        res["shipped"] = [float(np.abs(kp[0, ..., 0] - torch.sigmoid(pl)[0, 0].numpy()).max()),
                          float(np.abs(kd[0] - dp[0].permute(1, 2, 0).numpy()).max()), float(kd.max())]
        # loss: stardist's Keras loss functions on the same tensors
        import tensorflow as tf
        from tensorflow.keras import backend as K
        pt = rng.random((2, 24, 24, 1)).astype(np.float32) * (rng.random((2, 24, 24, 1)) < 0.6)
        pp = rng.uniform(0.05, 0.95, (2, 24, 24, 1)).astype(np.float32)
        dt = rng.random((2, 24, 24, 16)).astype(np.float32) * 9
        dpp = rng.random((2, 24, 24, 16)).astype(np.float32) * 9
        k_prob = float(tf.reduce_mean(K.binary_crossentropy(tf.constant(pt), tf.constant(pp))))
        k_dist = float(tf.reduce_mean(masked_loss_mae(tf.constant(pt), reg_weight=1e-4)(tf.constant(dt), tf.constant(dpp))))
        logit = torch.logit(torch.from_numpy(pp)).permute(0, 3, 1, 2)
        tot, lp, ld = T.stardist_loss(logit, torch.from_numpy(dpp).permute(0, 3, 1, 2),
                                      torch.from_numpy(pt).permute(0, 3, 1, 2), torch.from_numpy(dt).permute(0, 3, 1, 2))
        res["loss"] = [k_prob, float(lp), k_dist, float(ld), float(tot), k_prob + 0.2 * k_dist]
        print(json.dumps(res))
    """)
    for g in ("g1", "g2"):
        assert res[g][0] < 1e-5 and res[g][1] < 1e-4 and res[g][2], res[g]
    prob_diff, dist_diff, dist_max = res["shipped"]
    assert dist_max > 5  # real distances, not a degenerate output
    assert prob_diff < 1e-4 and dist_diff < 1e-3
    k_prob, t_prob, k_dist, t_dist, tot, k_tot = res["loss"]
    assert abs(k_prob - t_prob) < 1e-4 * k_prob
    assert abs(k_dist - t_dist) < 1e-4 * k_dist
    assert abs(tot - k_tot) < 1e-4 * k_tot


def test_tiny_training_run_exports_a_model_the_plugin_segments_with(tmp_path, sample):
    x, y = sample
    out = tmp_path / "run"
    s = T.TorchTrainSettings(net=T.TorchStarDistConfig(grid=2, n_rays=16, unet_n_filter_base=8, unet_n_depth=2),
                             patch_size=64, batch_size=4, steps=12, warmup=2, learning_rate=1e-3, workers=0,
                             save_at=(1.0,), log_every=6, n_val_patches=8)
    lines = []
    saved = T.train_torch([x], [y], [x[:256, :256]], [y[:256, :256]], out, s, log=lines.append)
    assert [p.name for p in saved] == ["ckpt_100.npz"]
    weights, meta = T.load_checkpoint(saved[0])
    assert meta["step"] == 12 and meta["config2d"]["grid"] == [2, 2] and np.isfinite(meta["val_loss_ema"])
    assert len(lines) == 3 and "loss" in lines[0] and lines[2] == "saved ckpt_100.npz at step 12"
    net = T.build_network(s.net)
    T.load_keras_weights(net, weights)  # round trip: the checkpoint fits the architecture
    with pytest.raises(ValueError, match="not this architecture"):
        T.load_keras_weights(T.build_network(T.TorchStarDistConfig(grid=1)), weights)
    # the settings are saved beside the checkpoints, from the start of training
    assert T.TorchTrainSettings.from_training_json(out) == s
    record = json.loads((out / "training.json").read_text())
    assert record["framework"] == "pytorch" and [c["file"] for c in record["checkpoints"]] == ["ckpt_100.npz"]
    assert record["checkpoints"][0]["step"] == 12 and record["patch"] == 64

    model_dir = tmp_path / "models" / "tiny-stardist"
    image = sd_data.test_image_nuclei_2d()[:128, :128]
    script = f"""
        import json, sys, numpy as np
        sys.argv = ["export", "--to-stardist", {str(saved[0])!r}, "--run", {str(model_dir)!r}]
        import runpy
        try:
            runpy.run_path({str(EXPORT)!r}, run_name="__main__")
        except SystemExit as e:
            assert not e.code, e.code
        from napari_cnnvision import api
        from napari_cnnvision.core.normalize import percentile_normalize
        from stardist.data import test_image_nuclei_2d
        from stardist.models import StarDist2D
        img = test_image_nuclei_2d()[:128, :128]
        m = StarDist2D(None, name={model_dir.name!r}, basedir={str(model_dir.parent)!r})
        m.load_weights("weights_ckpt_100.h5")
        prob, dist = m.predict(percentile_normalize(img, 1.0, 99.8))
        np.save({str(tmp_path / "prob.npy")!r}, prob)
        r = api.segment(img, {str(model_dir)!r}, prob_thresh=0.01, nms_thresh=0.3)
        print(json.dumps({{"shape": list(r.labels.shape), "dtype": str(r.labels.dtype), "n": r.n_objects,
                          "max_label": int(r.labels.max())}}))
    """
    res = _run(script)
    assert res["shape"] == [128, 128] and np.issubdtype(np.dtype(res["dtype"]), np.integer)
    assert res["n"] > 0 and res["max_label"] == res["n"]  # at prob 0.01 the tiny network finds objects
    # the exported folder is the trained network: stardist's prediction equals the torch network's
    from napari_cnnvision.core.normalize import percentile_normalize

    with torch.no_grad():
        logit, _ = net.eval()(torch.from_numpy(percentile_normalize(image, 1.0, 99.8))[None, None])
    want = torch.sigmoid(logit)[0, 0].numpy()
    got = np.load(tmp_path / "prob.npy")
    assert got.shape == want.shape == (64, 64)
    assert np.abs(got - want).max() < 1e-4 and want.std() > 0
    assert (model_dir / "config.json").is_file() and (model_dir / "weights_ckpt_100.h5").is_file()
    training = json.loads((model_dir / "training.json").read_text())
    assert training["framework"] == "pytorch" and training["checkpoints"][0]["step"] == 12
    assert T.TorchTrainSettings.from_dict(training["settings"]) == s


def _small_dataset(root, sample):
    """Two 256² train crops and one 128² val crop of stardist's sample in the layout of
    ../shared/data/dsb2018_fluo (the val crop small: package_stardist.py's threshold search runs
    non-maximum suppression on every candidate of a barely trained network)."""
    import tifffile

    x, y = sample
    for sub in ("images", "masks", "splits"):
        (root / sub).mkdir(parents=True)
    crops = {"a": (slice(0, 256), slice(0, 256)), "b": (slice(256, 512), slice(0, 256)),
             "c": (slice(0, 128), slice(256, 384))}
    for i, sl in crops.items():
        tifffile.imwrite(root / "images" / f"{i}.tif", x[sl])
        tifffile.imwrite(root / "masks" / f"{i}.tif", y[sl].astype(np.uint16))
    (root / "splits" / "train.txt").write_text("a\nb\n")
    (root / "splits" / "val.txt").write_text("c\n")
    return root


def test_training_script_end_to_end_on_a_small_dataset(tmp_path, sample):
    """The recipe's command line on a dataset folder in the layout of ../shared/data/dsb2018_fluo."""
    import runpy

    root = _small_dataset(tmp_path / "data", sample)
    out = tmp_path / "run"
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_nuclei_stardist_torch.py"
    argv = ["--data", str(root), "--out", str(out), "--grid", "2", "--rays", "16", "--filters", "8",
            "--depth", "2", "--steps", "6", "--batch", "2", "--patch", "64", "--workers", "0",
            "--warmup", "2", "--n-val-patches", "4", "--log-every", "3", "--save-at", "0.5", "1.0"]
    import sys as _sys

    old = _sys.argv
    _sys.argv = [str(script)] + argv
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(script), run_name="__main__")
        assert not e.value.code
    finally:
        _sys.argv = old
    assert sorted(p.name for p in out.glob("ckpt_*.npz")) == ["ckpt_050.npz", "ckpt_100.npz"]
    _, meta = T.load_checkpoint(out / "ckpt_100.npz")
    assert meta["step"] == 6 and meta["settings"]["batch_size"] == 2 and meta["config2d"]["n_rays"] == 16
    log = (out / "train.log").read_text()
    assert "train 2 images, val 1 images" in log and "step 6" in log and "saved ckpt_100.npz" in log


def test_packaging_a_torch_trained_model_records_its_stage(tmp_path, sample):
    """export_stardist_torch.py -> package_stardist.py: thresholds, val metrics and a card naming the run."""
    x, y = sample
    data = _small_dataset(tmp_path / "data", sample)
    s = T.TorchTrainSettings(net=T.TorchStarDistConfig(grid=2, n_rays=16, unet_n_filter_base=8, unet_n_depth=2),
                             patch_size=64, batch_size=2, steps=4, warmup=1, workers=0, save_at=(1.0,),
                             n_val_patches=2)
    ckpt = T.train_torch([x[:256, :256]], [y[:256, :256]], [x[:256, 256:]], [y[:256, 256:]],
                         tmp_path / "ck", s, log=lambda m: None)[0]
    run, dest = tmp_path / "run" / "nuclei-stardist", tmp_path / "models" / "tiny"
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    res = _run(f"""
        import json, runpy, sys
        for argv, script in [
            (["--to-stardist", {str(ckpt)!r}, "--run", {str(run)!r}], "export_stardist_torch.py"),
            (["--run", {str(run)!r}, "--data", {str(data)!r}, "--dest", {str(dest)!r}, "--candidates",
              "weights_ckpt_100.h5", "--hardware", "a test CPU", "--recipe", "scripts/train_nuclei_stardist_torch.py",
              "--command", "tiny run"], "package_stardist.py")]:
            sys.argv = [script] + argv
            try:
                runpy.run_path({str(scripts)!r} + "/" + script, run_name="__main__")
            except SystemExit as e:
                assert not e.code, e.code
        from napari_cnnvision.core.registry import read_card
        card = read_card({str(dest)!r}, "user")
        # the card's val figure, recomputed through the public API with the packaged folder
        import tifffile
        from napari_cnnvision import api
        from napari_cnnvision.backends.evaluate import score_segmentations
        img, mask = (tifffile.imread({str(data)!r} + f"/{{d}}/c.tif") for d in ("images", "masks"))
        r = api.segment(img, {str(dest)!r}, isolated=False)
        ap = score_segmentations([mask], [r.labels]).card_metrics()["ap@0.5"]
        print(json.dumps({{"backend": card.backend, "training": card.training, "metrics": card.metrics,
                          "ap_again": ap, "thresholds_used": [r.prob_thresh, r.nms_thresh]}}))
    """)
    assert res["backend"] == "stardist2d"
    t = res["training"]
    assert t["hardware"] == "a test CPU" and t["command"].startswith("tiny run")
    stage = t["stages"][-1]
    assert stage["framework"] == "pytorch" and stage["steps"] == 4 and stage["batch"] == 2
    assert stage["weights"] == "weights_ckpt_100.h5"
    assert res["metrics"]["val"]["ap@0.5"] == res["ap_again"] and res["metrics"]["val"]["n_images"] == 1
    thresholds = json.loads((dest / "thresholds.json").read_text())
    assert t["thresholds"] == thresholds and res["thresholds_used"] == [thresholds["prob"], thresholds["nms"]]
    assert (dest / "weights_best.h5").is_file() and (dest / "thresholds.json").is_file()
