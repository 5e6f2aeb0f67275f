"""bioimage.io model packages in: read by path and by name, run with their own pre/post-processing
and tiling, checked against their test tensors; bad packages get clear errors. Offline: any
network connection fails these tests."""
import hashlib
import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from napari_cnnvision.core.registry import CorruptModel, ModelNotFound, ModelRegistry, read_card

SHARED_PKG = ROOT.parent / "shared" / "models" / "bioimageio_unet2d_nuclei_broad"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No downloads: a network connection raises; bioimageio's cache is a fresh temp folder."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access in a test: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))
    try:
        from bioimageio.spec._internal._settings import settings
    except ImportError:
        return
    monkeypatch.setattr(settings, "cache_path", tmp_path / "bioimageio-cache")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """TorchScript weights of tiny models: the identity, and (foreground, boundary) = (x, 1 - x)."""
    import torch

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    class FgBoundary(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, 1 - x], dim=1)

    d = tmp_path_factory.mktemp("weights")
    torch.jit.save(torch.jit.script(Identity()), str(d / "identity.pt"))
    torch.jit.save(torch.jit.script(FgBoundary()), str(d / "fgb.pt"))
    return d


def _space(ax, size):
    return {"id": ax, "type": "space", "size": size}


def make_package(folder: Path, weights_dir: Path, *, model="identity", size=None, halo=0, channels=None,
                 rdf_edit=None, z=False) -> Path:
    """A small valid bioimage.io model package: scale_range preprocessing, TorchScript weights."""
    folder.mkdir(parents=True)
    (folder / "weights.pt").write_bytes((weights_dir / f"{model}.pt").read_bytes())
    size = size or {"min": 16, "step": 8}
    rng = np.random.default_rng(0)
    x = rng.uniform(100, 1000, (1, 1, 32, 32)).astype(np.float32)
    lo, hi = np.percentile(x, 0), np.percentile(x, 100)
    y = (x - lo) / (hi - lo + 1e-6)
    if model == "fgb":
        y = np.concatenate([y, 1 - y], axis=1)
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", y.astype(np.float32))
    (folder / "README.md").write_text("A test package.\n")
    in_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}]
    in_axes += ([_space("z", size)] if z else []) + [_space("y", size), _space("x", size)]
    names = channels or (["foreground", "boundary"] if model == "fgb" else ["probability"])
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": names}]
    out_axes += [{"id": a, "type": "space", **({"halo": halo} if halo else {}),
                  "size": {"tensor_id": "raw", "axis_id": a}} for a in (["z"] if z else []) + ["y", "x"]]
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "Tiny Test Model",
        "description": "an identity network for tests", "authors": [{"name": "Test Author"}],
        "cite": [{"text": "a test", "doi": "10.1000/xyz"}], "license": "MIT", "documentation": "README.md",
        "tags": ["nuclei"],
        "inputs": [{"id": "raw", "axes": in_axes,
                    "test_tensor": {"source": "test_input.npy", "sha256": _sha(folder / "test_input.npy")},
                    "preprocessing": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 0,
                                                                       "max_percentile": 100}}]}],
        "outputs": [{"id": "prob", "axes": out_axes,
                     "test_tensor": {"source": "test_output.npy", "sha256": _sha(folder / "test_output.npy")}}],
        "weights": {"torchscript": {"source": "weights.pt", "sha256": _sha(folder / "weights.pt"),
                                    "pytorch_version": "2.0"}},
    }
    if rdf_edit is not None:
        rdf_edit(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


def two_squares(bg=1000.0, fg=1400.0) -> np.ndarray:
    img = np.full((48, 64), bg, np.float32)
    img[5:15, 5:15] = fg
    img[30:42, 40:55] = fg
    return img


# --- reading a package ----------------------------------------------------------------
def test_read_card_of_a_package_folder(tmp_path, weights_dir):
    pkg = make_package(tmp_path / "pkg", weights_dir)
    card = read_card(pkg, "path")
    assert (card.task, card.backend, card.axes, card.channels) == ("segment", "bioimageio", "YX", 1)
    assert card.name == "tiny-test-model" and card.classes == ["nucleus"]
    assert card.extra["bioimageio"]["weights"] == ["torchscript"]
    from napari_cnnvision.backends.dispatch import job_for, thresholds_for
    from napari_cnnvision.worker.jobs import framework_of

    assert job_for(card, task="segment") == "bioimageio.predict"
    assert framework_of("bioimageio.predict") == "torch"
    assert thresholds_for(card)["prob"] == 0.9  # a foreground map alone: seeds only where it is sure


def test_plugin_and_registry_listing_do_not_import_bioimageio(tmp_path, weights_dir):
    """Listing reads the JSON card that `models add` writes; bioimageio.spec only runs a model."""
    from napari_cnnvision.cli.models_cmd import add_package

    add_package(make_package(tmp_path / "pkg", weights_dir))
    code = ("import sys, napari_cnnvision\nfrom napari_cnnvision.core.registry import ModelRegistry\n"
            "names = [c.name for c in ModelRegistry().list()]\nassert 'tiny-test-model' in names, names\n"
            "bad = [m for m in sys.modules if m.startswith(('bioimageio', 'torch', 'onnxruntime'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- running one ----------------------------------------------------------------------
def test_package_preprocessing_is_honoured(tmp_path, weights_dir):
    """scale_range maps the background to 0 and the squares to 1: two objects. Without the package's
    preprocessing the identity network would return raw intensities > 1 everywhere: one object."""
    from napari_cnnvision.backends.dispatch import run_model

    card = read_card(make_package(tmp_path / "pkg", weights_dir), "path")
    res = run_model(two_squares(), card, task="segment")
    assert res.n_objects == 2
    assert sorted(res.table["area"].tolist()) == [100.0, 180.0]
    assert res.labels.shape == (48, 64)
    assert res.normalization["weights"] == "torchscript"
    res2 = run_model(two_squares(), card, task="segment", pmin=1, pmax=99)
    assert any("pmin/pmax were ignored" in w for w in res2.warnings)


def test_tiles_use_the_package_sizes_and_halo(tmp_path, weights_dir):
    """A fixed 32x32 input with halo 4: a 70x90 image runs in several windows; the assembled map
    equals the preprocessed image exactly (identity network), so no seam or offset."""
    from napari_cnnvision.backends.bioimageio.predict import load_pipeline, predict_maps

    pkg = make_package(tmp_path / "pkg", weights_dir, size=32, halo=4)
    _, m, _, pipe, adapter, _ = load_pipeline(str(pkg))
    assert m.window == {"y": (32, 0), "x": (32, 0)} and m.halo == {"y": 4, "x": 4}
    img = np.random.default_rng(1).uniform(0, 500, (1, 70, 90)).astype(np.float32)
    tiles = []
    out = predict_maps(pipe, adapter, m, img, tile_size=32, tile_done=lambda k, n: tiles.append(n))
    want = (img - img.min()) / (img.max() - img.min() + 1e-6)
    assert tiles and tiles[0] == 3 * 4  # cores of 24 px: ceil(70 / 24) x ceil(90 / 24)
    np.testing.assert_allclose(out, want, atol=1e-5)
    small = predict_maps(pipe, adapter, m, img[:, :20, :25])  # smaller than the fixed size: mirrored up
    np.testing.assert_allclose(small, (img[:, :20, :25] - img[:, :20, :25].min())
                               / np.ptp(img[:, :20, :25] + 0) , atol=1e-4)


def test_foreground_and_boundary_channels_map_to_the_watershed_classes():
    from napari_cnnvision.backends.bioimageio.predict import class_probs

    fg = np.array([[0.9, 0.6, 0.1]], np.float32)
    bd = np.array([[0.1, 0.5, 0.0]], np.float32)
    p = class_probs(np.stack([fg, bd]), ["foreground", "boundary"])
    np.testing.assert_allclose(p[1], [[0.8, 0.1, 0.1]], atol=1e-6)  # interior = foreground - boundary
    np.testing.assert_allclose(p[2], bd)
    q = class_probs(fg[None], ["foreground"])
    np.testing.assert_allclose(q[1], fg)
    assert not q[2].any()


def test_models_check_runs_the_test_tensors(tmp_path, weights_dir, capsys):
    from napari_cnnvision.cli import main as cli_main

    good = make_package(tmp_path / "good", weights_dir)
    assert cli_main.main(["models", "check", str(good)]) == 0
    assert "PASS  torchscript" in capsys.readouterr().out
    bad = make_package(tmp_path / "bad", weights_dir)
    np.save(bad / "test_output.npy", np.load(bad / "test_output.npy") + 0.1)
    assert cli_main.main(["models", "check", str(bad), "--json"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res[0]["weights"] == "torchscript" and not res[0]["passed"]
    assert res[0]["max_abs_diff"] == pytest.approx(0.1, abs=1e-4)


def test_models_add_lists_it_by_name_and_it_segments(tmp_path, weights_dir, capsys):
    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.cli import main as cli_main

    pkg = make_package(tmp_path / "pkg", weights_dir)
    assert cli_main.main(["models", "add", str(pkg)]) == 0
    capsys.readouterr()
    assert cli_main.main(["models", "--json"]) == 0
    listed = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["tiny-test-model"]["backend"] == "bioimageio" and listed["tiny-test-model"]["source"] == "user"
    assert cli_main.main(["models", "list"]) == 0 and "tiny-test-model" in capsys.readouterr().out
    card = ModelRegistry().get("tiny-test-model")
    assert run_model(two_squares(), card, task="segment").n_objects == 2
    assert cli_main.main(["models", "add", str(pkg)]) != 0  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    zpath = tmp_path / "pkg.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in pkg.iterdir():
            z.write(f, f.name)
    assert read_card(zpath, "path").backend == "bioimageio"
    assert cli_main.main(["models", "add", str(zpath), "--name", "zipped"]) == 0
    assert run_model(two_squares(), ModelRegistry().get("zipped"), task="segment").n_objects == 2


# --- bad input ------------------------------------------------------------------------
def test_a_zip_that_is_not_a_package(tmp_path):
    z = tmp_path / "notes.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("notes.txt", "hello")
    with pytest.raises(ModelNotFound, match="not a bioimage.io package"):
        read_card(z)
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    with pytest.raises(ModelNotFound, match="not a bioimage.io package"):
        read_card(tmp_path / "broken.zip")


@pytest.mark.parametrize("kind", ["dataset", "application"])
def test_an_rdf_of_another_type(tmp_path, kind):
    d = tmp_path / "res"
    d.mkdir()
    (d / "rdf.yaml").write_text(yaml.safe_dump({"format_version": "0.3.0", "type": kind, "name": "x",
                                                "description": "y"}))
    with pytest.raises(ModelNotFound, match=f"is a bioimage.io {kind} description, not a model"):
        read_card(d)


def test_weights_missing_or_failing_their_hash(tmp_path, weights_dir):
    from napari_cnnvision.backends.dispatch import run_model

    pkg = make_package(tmp_path / "pkg", weights_dir)
    card = read_card(pkg)
    (pkg / "weights.pt").write_bytes((pkg / "weights.pt").read_bytes() + b"tampered")
    with pytest.raises(CorruptModel, match="does not match its sha256"):
        run_model(two_squares(), card, task="segment")
    (pkg / "weights.pt").unlink()
    with pytest.raises(CorruptModel, match="weights file weights.pt is missing"):
        run_model(two_squares(), card, task="segment")
    with pytest.raises(CorruptModel, match="not installing|missing"):
        from napari_cnnvision.cli.models_cmd import add_package

        add_package(pkg)
    assert not (ModelRegistry().user_dir / "tiny-test-model").exists()


def test_unsupported_weights_format(tmp_path, weights_dir):
    """A TensorFlow SavedModel bundle (bioimageio.core's TF adapter is TF1-only) is refused by name;
    keras_hdf5 runs in the tf worker (tests/test_bioimageio_keras.py)."""
    def saved_model_only(rdf):
        rdf["weights"] = {"tensorflow_saved_model_bundle": {
            "source": "weights.pt", "sha256": rdf["weights"]["torchscript"]["sha256"], "tensorflow_version": "2.15"}}

    from napari_cnnvision.backends.dispatch import run_model

    with pytest.raises(CorruptModel,
                       match="weights in tensorflow_saved_model_bundle format.*this plugin runs torchscript.*keras_hdf5"):
        card = read_card(make_package(tmp_path / "pkg", weights_dir, rdf_edit=saved_model_only))
        run_model(two_squares(), card, task="segment")


def test_a_3d_model_is_refused(tmp_path, weights_dir):
    with pytest.raises(CorruptModel, match="3-D model.*only 2-D"):
        read_card(make_package(tmp_path / "pkg", weights_dir, z=True))


def test_a_multi_output_model_is_refused(tmp_path, weights_dir):
    def two_outputs(rdf):
        second = json.loads(json.dumps(rdf["outputs"][0]))
        second["id"] = "other"
        rdf["outputs"].append(second)

    with pytest.raises(CorruptModel, match="2 output.*one image in and one probability map out"):
        read_card(make_package(tmp_path / "pkg", weights_dir, rdf_edit=two_outputs))
    with pytest.raises(CorruptModel, match="cannot be mapped to foreground"):
        read_card(make_package(tmp_path / "pkg2", weights_dir, model="fgb", channels=["a", "b"]))


def test_unknown_fields_warn_and_go_on(tmp_path, weights_dir):
    from napari_cnnvision.backends.dispatch import run_model

    def extra(rdf):
        rdf["my_lab_field"] = {"anything": 1}

    from napari_cnnvision.backends.bioimageio.package import package_card

    pkg = make_package(tmp_path / "pkg", weights_dir, rdf_edit=extra)
    card = read_card(pkg)  # read from the YAML: validated (and warned about) where it runs
    assert "my_lab_field" in package_card(pkg, validate=True).extra["bioimageio"]["warnings"][0]
    res = run_model(two_squares(), card, task="segment")
    assert res.n_objects == 2 and any("unknown field(s) my_lab_field" in w for w in res.warnings)


# --- the real package (skipped without ../shared) -------------------------------------
@pytest.fixture
def shared_pkg():
    if not (SHARED_PKG / "bioimageio.yaml").is_file():
        pytest.skip("the shared bioimage.io package (../shared/models) is not available")
    return SHARED_PKG


def test_shared_package_reads_checks_and_segments_a_dsb_image(shared_pkg, shared_data, capsys):
    import tifffile

    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.cli import main as cli_main

    card = read_card(shared_pkg, "path")
    assert (card.backend, card.axes, card.channels) == ("bioimageio", "YX", 1)
    assert card.extra["bioimageio"]["weights"] == ["torchscript", "pytorch_state_dict", "onnx"]
    assert cli_main.main(["models", "check", str(shared_pkg), "--weights", "onnx"]) == 0
    assert "PASS  onnx" in capsys.readouterr().out
    d = shared_data / "dsb2018_fluo"
    name = (d / "splits" / "val.txt").read_text().split()[0]
    img, gt = tifffile.imread(d / "images" / f"{name}.tif"), tifffile.imread(d / "masks" / f"{name}.tif")
    res = run_model(img, card, task="segment", weights="onnx")  # ONNX is fixed at 512x512: mirrored up
    assert res.labels.shape == img.shape
    assert score_segmentations([gt], [res.labels]).at(0.5)["f1"] > 0.35  # 0.44 on this image


# --- export ---------------------------------------------------------------------------
def test_export_unet_passes_validation_and_reimports_with_the_same_labels(tmp_path, capsys):
    """`models export` writes a package that bioimageio.spec validates and whose test tensors pass
    (both checked by the export itself, and again here); re-imported it gives the U-Net's labels."""
    import tifffile

    from napari_cnnvision.backends.bioimageio.check import check_package
    from napari_cnnvision.backends.bioimageio.package import load_package
    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.cli import main as cli_main
    from napari_cnnvision.sample_data import load_sample

    img = np.asarray(load_sample("nuclei_2d"))[:150, :170]  # cropped to 144 x 168 (136 + k * 8)
    tifffile.imwrite(tmp_path / "test.tif", img)
    out = tmp_path / "pkg"
    assert cli_main.main(["models", "export", "nuclei-unet", "--to", str(out), "--test-image",
                          str(tmp_path / "test.tif")]) == 0
    descr, warnings_ = load_package(out)
    assert descr.validation_summary.status in ("passed", "valid-format") and not warnings_
    assert np.load(out / "test_input.npy").shape == (1, 1, 144, 168)  # valid sizes: run as they are
    assert [r.passed for r in check_package(out)] == [True]
    unet = ModelRegistry().get("nuclei-unet")
    pkg = read_card(out, "path")
    assert pkg.backend == "bioimageio" and pkg.extra["thresholds"]["seed"] == pytest.approx(
        __import__("napari_cnnvision.backends.dispatch", fromlist=["x"]).thresholds_for(unet)["seed"])
    crop = np.asarray(load_sample("nuclei_2d"))[100:228, 60:220]
    a, b = run_model(crop, unet, task="segment"), run_model(crop, pkg, task="segment")
    assert a.n_objects > 3
    np.testing.assert_array_equal(a.labels, b.labels)
    assert cli_main.main(["models", "export", "nuclei-unet", "--to", str(out)]) != 0  # exists: needs --force


def test_segment_widget_runs_a_package_browsed_to(make_napari_viewer, qtbot, tmp_path, weights_dir):
    """Browse to a package folder in the Segment widget: the job runs in the torch worker; the
    seed threshold is the widget's probability."""
    from napari_cnnvision.layers.segmentation import RESULT_KEY
    from napari_cnnvision.widgets.segment import BROWSE, SegmentWidget

    pkg = make_package(tmp_path / "pkg", weights_dir)
    viewer = make_napari_viewer()
    viewer.add_image(two_squares(), name="squares")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = BROWSE
    w.model_dir.value = str(pkg)
    w._on_model()
    w.image.value = viewer.layers["squares"]
    assert w.prob.value == pytest.approx(0.9)  # the package's default seed threshold
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180000)
    ours = [lyr for lyr in viewer.layers if RESULT_KEY in lyr.metadata]
    assert len(ours) == 1, w.status.value
    assert len(set(np.unique(ours[0].data)) - {0}) == 2, w.status.value


def test_segment_widget_opens_a_zip_chosen_with_the_zip_button(make_napari_viewer, tmp_path, weights_dir,
                                                               monkeypatch):
    """The picker's .zip button puts the chosen file into the folder field; it opens like a folder."""
    import shutil

    from qtpy.QtWidgets import QFileDialog

    from napari_cnnvision.widgets.segment import BROWSE, SegmentWidget

    pkg = make_package(tmp_path / "pkg", weights_dir)
    z = shutil.make_archive(str(tmp_path / "tiny"), "zip", pkg)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (z, "")))
    w = SegmentWidget(make_napari_viewer())
    assert w.picker.zip_btn.native.isHidden()  # the viewer is not shown: ask Qt what is hidden
    w.model.value = BROWSE
    assert not w.picker.zip_btn.native.isHidden() and not w.model_dir.native.isHidden()
    w.picker.zip_btn.clicked.emit()
    assert str(w.model_dir.value) == z
    assert w._card is not None and (w._card.backend, w._card.path) == ("bioimageio", z), w.status.value
    assert w.run_btn.enabled and w.prob.value == pytest.approx(0.9)


BROWSE_TIMING = r"""
import sys, time
from napari_cnnvision.core.registry import read_card
from napari_cnnvision.backends.dispatch import thresholds_for
t = time.perf_counter()
card = read_card(sys.argv[1], "path")
thresholds_for(card)
print(card.backend, card.name, "bioimageio.spec" in sys.modules, time.perf_counter() - t)
"""


def test_browsing_to_a_package_does_not_import_bioimageio_spec(tmp_path, weights_dir):
    """What the Segment widget does on a browse (read the card, its thresholds) reads the YAML
    only: bioimageio.spec (seconds to import and validate) runs in the worker."""
    pkg = make_package(tmp_path / "pkg", weights_dir)
    out = subprocess.run([sys.executable, "-c", BROWSE_TIMING, str(pkg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    backend, name, spec_loaded, _ = out.stdout.split()
    assert (backend, name, spec_loaded) == ("bioimageio", "tiny-test-model", "False")
