"""`napari-cnnvision segment` and `evaluate segment`: end to end (the console script in a subprocess, where
the network runs or the installed entry point is what is tested; in-process ``main(argv)`` otherwise) and the
batch loop in-process."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from stardist_helpers import make_tiny_stardist

from napari_cnnvision.cli.main import main
from napari_cnnvision.core.registry import ModelCard, write_card
from napari_cnnvision.core.results import SegmentationResult

CLI = str(Path(sys.executable).with_name("napari-cnnvision"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_stardist(tmp_path_factory.mktemp("models"))


def test_segment_writes_tif_and_csv_and_skips_done(tmp_path, tiny, capsys):
    from napari_cnnvision.sample_data import load_sample

    src = tmp_path / "in"
    src.mkdir()
    img = load_sample("nuclei_2d")
    tifffile.imwrite(src / "a.tif", img)
    tifffile.imwrite(src / "b.tif", img[:200, :300])
    out = tmp_path / "out"
    run = lambda *extra: subprocess.run([CLI, "segment", str(src), "--out", str(out), "--model", str(tiny),
                                         "--prob-thresh", "0.3", *extra], capture_output=True, text=True,
                                        timeout=300)
    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    assert "segmented 2, skipped 0" in r.stdout
    lab = tifffile.imread(out / "a.tif")
    assert lab.shape == img.shape and lab.dtype in (np.uint16, np.uint32)
    assert tifffile.imread(out / "b.tif").shape == (200, 300)
    header = (out / "a.csv").read_text().splitlines()
    assert header[0] == "label,area,centroid_y,centroid_x,probability"
    assert len(header) - 1 == len(set(np.unique(lab)) - {0})
    # a second run finds both results: in-process (no model runs, so no subprocess is needed to keep
    # TensorFlow out of pytest); the two files are not rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["segment", str(src), "--out", str(out), "--model", str(tiny), "--prob-thresh", "0.3"]) == 0
    assert "segmented 0, skipped 2" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    r3 = run("--tta", "--overwrite")  # test-time augmentation: same files, other network output
    assert r3.returncode == 0 and "segmented 2, skipped 0" in r3.stdout, r3.stderr[-2000:]
    assert tifffile.imread(out / "a.tif").shape == img.shape
    assert not np.array_equal(tifffile.imread(out / "a.tif"), lab)


def test_evaluate_segment_against_truth(tmp_path, capsys):
    from napari_cnnvision.sample_data import _stardist_image

    truth = tifffile.imread(_stardist_image("mask2d.tif"))
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    tifffile.imwrite(tmp_path / "t" / "x.tif", truth)
    pred = truth.copy()
    ids = np.unique(truth)[1:]
    pred[np.isin(pred, ids[: len(ids) // 4])] = 0  # drop a quarter of the objects
    tifffile.imwrite(tmp_path / "p" / "x.tif", pred)
    r = subprocess.run([CLI, "evaluate", "segment", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t"),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    n, kept = len(ids), len(ids) - len(ids) // 4
    assert s["iou"][0] == 0.5 and s["precision"][0] == 1.0
    assert s["recall"][0] == pytest.approx(kept / n)
    assert s["ap"][0] == pytest.approx(kept / n)  # TP/(TP+FP+FN) with FP = 0
    # the text report: in-process (the console script itself was run just above)
    assert main(["evaluate", "segment", "--pred", str(tmp_path / "p"), "--truth", str(tmp_path / "t")]) == 0
    txt = capsys.readouterr().out
    assert "precision" in txt and "0.90" in txt


# --- the batch loop in-process, with a stand-in for the network (fast, no TensorFlow) -------------



@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A model folder (card only) and an api.segment that labels pixels above the image mean;
    records the keyword arguments of each call."""
    from napari_cnnvision import api

    folder = tmp_path / "fake-model"
    folder.mkdir()
    write_card(ModelCard("fake", "segment", "unet", ["nucleus"]), folder)
    calls = []

    def segment(image, card, **kw):
        calls.append(kw)
        img = np.asarray(image)
        img = img if img.ndim == 2 else img[..., 0]
        labels = (img > img.mean()).astype(np.uint16)
        n = int(labels.max())
        table = {"label": np.arange(1, n + 1), "area": np.full(n, float(labels.sum()))}
        return SegmentationResult(labels=labels, table=table, model=card.name)

    monkeypatch.setattr(api, "segment", segment)
    return folder, calls


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    made = {}
    for i, name in enumerate(names):
        img = (rng.random((16 + i, 20)) * 200).astype(np.uint8)
        if name.endswith(".png"):
            from skimage.io import imsave

            imsave(folder / name, img, check_contrast=False)
        else:
            tifffile.imwrite(folder / name, img)
        made[name] = img
    return made


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_out_folder_that_would_overwrite_inputs_is_refused(tmp_path, fake, capsys):
    model, calls = fake
    src = tmp_path / "imgs"
    _images(src, ["a.tif", "b.png"])
    before = _snapshot(src)
    rc = main(["segment", str(src), "--out", str(src), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "would overwrite the input" in err and "a.tif" in err
    assert _snapshot(src) == before  # nothing written, not even b's outputs
    assert calls == []


def test_inputs_with_one_stem_get_distinct_predictable_outputs(tmp_path, fake, capsys):
    model, calls = fake
    src = tmp_path / "in"
    imgs = _images(src, ["a.png", "a.tif", "b.tif"])
    out = tmp_path / "out"
    rc = main(["segment", str(src), "--out", str(out), "--model", str(model), "--quiet"])
    res = capsys.readouterr()
    assert rc == 0, res.err
    assert "segmented 3, skipped 0" in res.out
    assert sorted(p.name for p in out.iterdir()) == ["a.png.csv", "a.png.tif", "a.tif.csv", "a.tif.tif",
                                                    "b.csv", "b.tif"]
    for name, stem in (("a.png", "a.png"), ("a.tif", "a.tif"), ("b.tif", "b")):
        img = imgs[name]
        np.testing.assert_array_equal(tifffile.imread(out / f"{stem}.tif"), img > img.mean())
    # a second run finds every result and skips all three
    assert main(["segment", str(src), "--out", str(out), "--model", str(model), "--quiet"]) == 0
    assert "segmented 0, skipped 3" in capsys.readouterr().out


def test_same_file_name_in_two_folders_is_refused(tmp_path, fake, capsys):
    model, calls = fake
    _images(tmp_path / "x", ["a.tif"])
    _images(tmp_path / "y", ["a.tif"])
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 2 and "same output name" in err, err
    assert not out.exists() or list(out.iterdir()) == []
    assert calls == []


@pytest.mark.parametrize("which", ["labels", "table"])
def test_a_failed_write_is_reported_and_the_batch_goes_on(tmp_path, fake, capsys, monkeypatch, which):
    from napari_cnnvision.core import io, tables

    model, calls = fake
    src = tmp_path / "in"
    _images(src, ["a.tif", "b.tif", "c.tif"])
    out = tmp_path / "out"
    mod, fn = (io, "write_tiff") if which == "labels" else (tables, "write_table")
    real = getattr(mod, fn)

    def failing(path, data):
        if Path(path).stem == "b":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(mod, fn, failing)
    rc = main(["segment", str(src), "--out", str(out), "--model", str(model), "--quiet"])
    res = capsys.readouterr()
    assert rc == 1
    assert "segmented 2, skipped 0 (already done), failed 1" in res.out
    assert [line for line in res.err.splitlines() if "b.tif" in line and "No space left" in line]
    # a and c are complete; b has no half-written pair (a re-run redoes it)
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.tif", "c.csv", "c.tif"]
    monkeypatch.setattr(mod, fn, real)
    assert main(["segment", str(src), "--out", str(out), "--model", str(model), "--quiet"]) == 0
    assert "segmented 1, skipped 2" in capsys.readouterr().out


def test_pmin_pmax_are_passed_only_when_given(tmp_path, fake, capsys):
    model, calls = fake
    src = tmp_path / "in"
    _images(src, ["a.tif"])
    assert main(["segment", str(src), "--out", str(tmp_path / "o1"), "--model", str(model), "--quiet"]) == 0
    assert "pmin" not in calls[-1] and "pmax" not in calls[-1]  # the card's normalization
    assert main(["segment", str(src), "--out", str(tmp_path / "o2"), "--model", str(model), "--quiet",
                 "--pmin", "2"]) == 0
    assert calls[-1]["pmin"] == 2.0 and "pmax" not in calls[-1]
    assert main(["segment", str(src), "--out", str(tmp_path / "o3"), "--model", str(model), "--quiet",
                 "--pmin", "0.5", "--pmax", "99"]) == 0
    assert (calls[-1]["pmin"], calls[-1]["pmax"]) == (0.5, 99.0)


def test_normalization_help_names_the_model_card(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the model's normalization (its card)" in text


def test_a_file_given_twice_is_segmented_once(tmp_path, fake, capsys):
    model, calls = fake
    src = tmp_path / "in"
    _images(src, ["a.tif", "b.tif"])
    rc = main(["segment", str(src), str(src / "a.tif"), "--out", str(tmp_path / "o"), "--model", str(model),
               "--quiet"])
    assert rc == 0 and "segmented 2, skipped 0" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.csv", "a.tif", "b.csv", "b.tif"]


def test_debug_shows_the_traceback_of_a_failed_image(tmp_path, fake, capsys):
    model, calls = fake
    src = tmp_path / "in"
    _images(src, ["a.tif"])
    (src / "broken.tif").write_bytes(b"not a tiff")
    args = ["segment", str(src), "--out", str(tmp_path / "o"), "--model", str(model), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.tif: cannot read image" in err and "Traceback" not in err
    assert main(["--debug", *args]) == 1  # a.tif is done (skipped), broken.tif fails again
    res = capsys.readouterr()
    assert "Traceback" in res.err and "broken.tif: cannot read image" in res.err
    assert "segmented 0, skipped 1 (already done), failed 1" in res.out
