"""bioimage.io out for StarDist: the shipped nuclei-stardist exported in the TensorFlow worker is a
valid package (bioimageio.spec, its own test tensors run by bioimageio.core's Keras adapter during
the export), documents StarDist's post-processing as StarDist's packages do, and re-imported
(folder, zip, `models add`) segments like the original. TensorFlow stays out of this process."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_cnnvision.core.registry import CorruptModel, ModelRegistry, read_card
from napari_cnnvision.worker import JobError


@pytest.fixture(scope="module")
def tf_pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


@pytest.fixture(scope="module")
def exported(tf_pool, tmp_path_factory):
    """nuclei-stardist exported once (test tensors from a crop of the nuclei sample)."""
    from napari_cnnvision.backends.bioimageio.export import export_job_name
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.sample_data import load_sample

    card = ModelRegistry().get("nuclei-stardist")
    out = tmp_path_factory.mktemp("export") / "nuclei-stardist-pkg"
    image = np.asarray(load_sample("nuclei_2d"))[100:320, 150:380]  # 220 x 230: cropped to 208 x 208
    events = []
    job = export_job_name(card)
    assert job == "bioimageio.export_stardist"
    got = tf_pool.run(job, {"model": card_payload(card), "dest": str(out), "test_image": image},
                      on_event=events.append)
    assert got == str(out)
    return card, out, image, events


def test_stardist_package_is_valid_and_documents_stardist(exported):
    from napari_cnnvision.backends.bioimageio.package import load_package

    card, out, image, events = exported
    assert any("test tensors" in (e.message or "") for e in events)  # progress reached the check
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
    np.testing.assert_array_equal(x[0, ..., 0], image[6:214, 11:219])  # the centred crop of the real image
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
    from napari_cnnvision.sample_data import load_sample

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


def test_models_widget_exports_into_a_new_folder(make_napari_viewer, qtbot, tmp_path):
    """The Models widget's export runs in the worker (the U-Net in the torch one) and never
    overwrites: an existing `<model>-bioimageio` folder makes it propose `-2`."""
    from napari_cnnvision.widgets.models import ModelsWidget

    w = ModelsWidget(make_napari_viewer())
    assert {"nuclei-unet", "nuclei-stardist"} <= set(w.export_model.choices)
    assert "bloodcells-yolo" not in w.export_model.choices and not w.export_btn.enabled
    taken = tmp_path / "nuclei-unet-bioimageio"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    w.export_model.value = "nuclei-unet"
    w.export_dir.value = tmp_path
    assert w.export_path() == tmp_path / "nuclei-unet-bioimageio-2" and w.export_btn.enabled
    w.export_btn.clicked.emit()
    assert w.runner.running and not w.export_btn.enabled
    qtbot.waitUntil(lambda: not w.runner.running, timeout=240000)
    out = tmp_path / "nuclei-unet-bioimageio-2"
    assert (out / "rdf.yaml").is_file(), w.status.value
    assert "exported as a bioimage.io package" in w.status.value and w.progress.value == 100
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert read_card(out, "path").backend == "bioimageio"
    assert w.export_path() == tmp_path / "nuclei-unet-bioimageio-3"
