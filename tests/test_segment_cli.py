"""`napari-cnnvision segment` and `evaluate segment` end to end (subprocesses)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from stardist_helpers import make_tiny_stardist

CLI = str(Path(sys.executable).with_name("napari-cnnvision"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_stardist(tmp_path_factory.mktemp("models"))


def test_segment_writes_tif_and_csv_and_skips_done(tmp_path, tiny):
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
    r2 = run()
    assert "segmented 0, skipped 2" in r2.stdout
    r3 = run("--tta", "--overwrite")  # test-time augmentation: same files, other network output
    assert r3.returncode == 0 and "segmented 2, skipped 0" in r3.stdout, r3.stderr[-2000:]
    assert tifffile.imread(out / "a.tif").shape == img.shape
    assert not np.array_equal(tifffile.imread(out / "a.tif"), lab)


def test_evaluate_segment_against_truth(tmp_path):
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
    txt = subprocess.run([CLI, "evaluate", "segment", "--pred", str(tmp_path / "p"), "--truth",
                          str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert "precision" in txt.stdout and "0.90" in txt.stdout
