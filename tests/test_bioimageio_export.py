"""bioimage.io out for StarDist: the shipped nuclei-stardist exported (Models widget) in the TensorFlow worker is a
valid package (bioimageio.spec, its own test tensors run by bioimageio.core's Keras adapter during
the export), documents StarDist's post-processing as StarDist's packages do, and re-imported
(folder, zip, `models add`) segments like the original. TensorFlow stays out of this process."""
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_cnnvision.core.registry import CorruptModel, ModelRegistry, read_card
from napari_cnnvision.sample_data import load_sample
from napari_cnnvision.worker import JobError


class _Viewer:
    """Stands in for napari's viewer: the Models widget only keys its worker pool on it."""


@pytest.fixture(scope="module")
def exported(qapp, tmp_path_factory):
    """nuclei-stardist exported once through the Models widget's button (TensorFlow worker; test
    tensors from the bundled nuclei sample), into a folder whose first proposed name is taken."""
    from napari_cnnvision.widgets.models import ModelsWidget

    w = ModelsWidget(_Viewer())
    parent = tmp_path_factory.mktemp("export")
    taken = parent / "nuclei-stardist-bioimageio"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    w.export_model.value = "nuclei-stardist"
    w.export_dir.value = parent
    out = parent / "nuclei-stardist-bioimageio-2"
    assert w.export_path() == out and w.export_btn.enabled
    events, shown = [], w._on_progress
    w._on_progress = lambda ev: (events.append(ev), shown(ev))
    w.export_btn.clicked.emit()
    assert w.runner.running and not w.export_btn.enabled
    deadline = time.monotonic() + 400
    while w.runner.running and time.monotonic() < deadline:
        qapp.processEvents()
        time.sleep(0.05)
    try:
        yield ModelRegistry().get("nuclei-stardist"), out, w, events
    finally:
        w.pool.shutdown()


@pytest.fixture(scope="module")
def tf_pool(exported):
    return exported[2].pool


def test_models_widget_exports_into_a_new_folder(exported):
    """The export ran in the worker, with progress, and overwrote nothing: the taken
    `<model>-bioimageio` made it write `-2`; the next proposal is `-3`."""
    _, out, w, events = exported
    assert (out / "rdf.yaml").is_file(), w.status.value
    assert "exported as a bioimage.io package" in w.status.value and w.progress.value == 100
    assert any("test tensors" in (e.message or "") for e in events)  # progress reached the check
    assert set(w.pool.workers) == {"tf"}  # StarDist's export: in the TensorFlow worker only
    assert [p.name for p in (out.parent / "nuclei-stardist-bioimageio").iterdir()] == ["keep.txt"]
    assert w.export_path() == out.parent / "nuclei-stardist-bioimageio-3" and w.export_btn.enabled
    assert {"nuclei-unet", "nuclei-stardist"} <= set(w.export_model.choices)
    assert "bloodcells-yolo" not in w.export_model.choices


def test_stardist_package_is_valid_and_documents_stardist(exported):
    from napari_cnnvision.backends.bioimageio.package import load_package

    card, out, _, _ = exported
    image = np.asarray(load_sample("nuclei_2d"))  # 512 x 512: the centred 208 x 208 crop
    descr, warnings_ = load_package(out)
    assert descr.validation_summary.status in ("passed", "valid-format") and not warnings_
    assert list(descr.weights.model_dump(exclude_none=True)) == ["keras_hdf5"]
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    pre = rdf["inputs"][0]["preprocessing"][-1]
    assert pre["id"] == "scale_range" and (pre["kwargs"]["min_percentile"], pre["kwargs"]["max_percentile"]) == (
        card.normalization["pmin"], card.normalization["pmax"])
    x = np.load(out / "test_input.npy")
    y = np.load(out / "test_output.npy")
    assert x.shape == (1, 208, 208, 1) and y.shape == (1, 208, 208, 33)
    np.testing.assert_array_equal(x[0, ..., 0], image[152:360, 152:360])  # the centred crop of the real image
    assert 0.0 <= y[..., 0].min() and y[..., 0].max() <= 1.0 and (y[..., 0] > 0.5).mean() > 0.05
    np.testing.assert_array_equal(y[0, ::2, ::2], y[0, 1::2, 1::2])  # grid cells repeated
    sd = rdf["config"]["stardist"]
    thr = json.loads((Path(card.path) / "thresholds.json").read_text())
    assert sd["thresholds"] == thr and sd["weights"] == "weights_best.h5" and sd["config"]["n_rays"] == 32
    assert {a["source"] for a in rdf["attachments"]} == {"config.json", "thresholds.json", "weights_best.h5"}
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-030-00934-2_30" and rdf["license"]
    doc = (out / "README.md").read_text()
    assert "dsb2018_fluo" in doc and "ap@0.5 0.8537" in doc and "non-maximum suppression" in doc


def test_reimported_package_segments_like_the_original(exported, tf_pool, tmp_path):
    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.cli.models_cmd import add_package

    card, out, _, _ = exported
    z = shutil.make_archive(str(tmp_path / "pkg"), "zip", out)
    by_zip = read_card(z, "path")
    assert (by_zip.backend, by_zip.name, by_zip.normalization) == ("stardist2d", "nuclei-stardist",
                                                                   card.normalization)
    added = add_package(z, name="sd-from-zoo")
    assert ModelRegistry().get("sd-from-zoo").backend == "stardist2d"
    crop = np.asarray(load_sample("nuclei_2d"))[:160, :192]
    ref = run_model(crop, card, pool=tf_pool, task="segment")
    assert ref.n_objects > 5
    for other in (read_card(out, "path"), by_zip, added):
        res = run_model(crop, other, pool=tf_pool, task="segment")
        np.testing.assert_array_equal(res.labels, ref.labels)


def test_a_damaged_stardist_package_is_refused(exported, tmp_path):
    """The StarDist weights attached to a zip that do not match their sha256: a clear refusal."""
    _, out, _, _ = exported
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for f in out.iterdir():
            data = f.read_bytes()
            zf.writestr(f.name, data[:-16] + b"0" * 16 if f.name == "weights_best.h5" else data)
    with pytest.raises(CorruptModel, match="do not match their sha256"):
        read_card(bad, "path")


def test_export_refuses_an_existing_folder_and_other_models(tf_pool, tmp_path, capsys):
    from napari_cnnvision.backends.bioimageio.export import export_job_name
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.cli import main as cli_main

    card = ModelRegistry().get("nuclei-stardist")
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(JobError, match="exists already"):
        tf_pool.run(export_job_name(card), {"model": card_payload(card), "dest": str(dest)})
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert cli_main.main(["models", "export", "nuclei-stardist", "--to", str(dest)]) != 0
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(CorruptModel, match="only U-Net and 2-D StarDist"):
        export_job_name(ModelRegistry().get("bloodcells-yolo"))



@pytest.mark.parametrize("edit, message", [({"n_dim": 3}, "3-D StarDist package"),
                                           ({"n_classes": 2}, "multi-class StarDist package")])
def test_stardist_packages_this_plugin_cannot_run_are_refused(exported, tmp_path, edit, message):
    _, out, _, _ = exported
    rdf = yaml.safe_load((out / "rdf.yaml").read_text())
    rdf["config"]["stardist"]["config"].update(edit)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(CorruptModel, match=message):
        read_card(pkg, "path")
