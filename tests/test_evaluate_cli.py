"""`napari-cnnvision evaluate detect` and `evaluate localize` (in-process through the CLI's main)."""
import json
import shutil

import numpy as np
import pytest

from napari_cnnvision.cli.detect import write_coco
from napari_cnnvision.cli.main import main
from napari_cnnvision.core.formats.annotations import read_annotations

CLASSES = ["RBC", "WBC", "Platelets"]  # the detectors' order (the VOC files list them in another)


def _val_truth(shared_data, tmp_path, n=5):
    """A VOC folder with the first ``n`` BCCD val annotations that have a WBC and a platelet."""
    bccd = shared_data / "bccd"
    names = [s.strip() for s in (bccd / "splits" / "val.txt").read_text().split() if s.strip()]
    out = tmp_path / "truth"
    out.mkdir()
    for name in names:
        xml = (bccd / "annotations" / f"{name}.xml").read_text()
        if "<name>WBC</name>" in xml and "<name>Platelets</name>" in xml:
            (out / f"{name}.xml").write_text(xml)
        if len(list(out.iterdir())) == n:
            break
    assert len(list(out.iterdir())) == n
    return out


def _as_prediction(truth_dir, path, relabel=None):
    """The truth boxes written as the detect command writes its COCO file (all scores 0.9 .. 0.5)."""
    entries = {}
    for a in read_annotations(truth_dir).images:
        classes = [relabel.get(c, c) if relabel else c for c in a.classes]
        entries[a.image] = {"image": {"file_name": a.image, "height": a.size[0], "width": a.size[1]},
                            "boxes": a.boxes, "class_ids": np.array([CLASSES.index(c) for c in classes]),
                            "scores": np.linspace(0.9, 0.5, len(a)), "frame": None}
    write_coco(path, entries, CLASSES)
    return path


def _evaluate(capsys, *argv):
    capsys.readouterr()
    rc = main(["evaluate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_detect_perfect_and_swapped_class(shared_data, tmp_path, capsys):
    truth = _val_truth(shared_data, tmp_path)
    perfect = _as_prediction(truth, tmp_path / "perfect" / "detections.json")
    rc, out, err = _evaluate(capsys, "detect", "--pred", str(perfect), "--truth", str(truth), "--json")
    assert rc == 0, err
    m = json.loads(out)
    assert m["n_images"] == 5 and m["n_truth"] == m["n_pred"] > 20
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["ap50"] == {c: pytest.approx(1.0) for c in CLASSES}

    # every WBC called a platelet: WBC AP 0, the platelets get false positives, RBC untouched
    swapped = _as_prediction(truth, tmp_path / "swapped" / "detections.json", relabel={"WBC": "Platelets"})
    rc, out, err = _evaluate(capsys, "detect", "--pred", str(swapped), "--truth", str(truth), "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["ap50"]["WBC"] == pytest.approx(0.0)
    assert s["ap50"]["Platelets"] < 1.0
    assert s["ap50"]["RBC"] == pytest.approx(1.0)
    assert s["map50"] < m["map50"] - 0.3

    # the plain text report names the figures; a COCO file works as the truth too
    coco_truth = _as_prediction(truth, tmp_path / "coco" / "truth.json")
    rc, out, err = _evaluate(capsys, "detect", "--pred", str(swapped), "--truth", str(coco_truth))
    assert rc == 0, err
    assert "mAP@0.5" in out and "mAP@[.5:.95]" in out
    assert "scores >= 0.50 only" in out and "--score-thresh 0.01" in out  # the hint when low scores are missing
    wbc_line = next(line for line in out.splitlines() if line.strip().startswith("WBC"))
    assert wbc_line.split()[-1] == "0.000"


def test_evaluate_detect_missing_images_and_bad_input(shared_data, tmp_path, capsys):
    truth = _val_truth(shared_data, tmp_path, n=3)
    pred = _as_prediction(truth, tmp_path / "p" / "detections.json")
    extra = tmp_path / "truth_more"
    shutil.copytree(truth, extra)
    first = sorted(truth.iterdir())[0]
    (extra / "Other_00001.xml").write_text(first.read_text().replace(first.stem, "Other_00001"))
    rc, out, err = _evaluate(capsys, "detect", "--pred", str(pred), "--truth", str(extra), "--json")
    assert rc == 0, err
    m = json.loads(out)
    assert m["n_images"] == 3 and m["missing_predictions"] == ["Other_00001.jpg"]

    rc, _, err = _evaluate(capsys, "detect", "--pred", str(tmp_path / "nope.json"), "--truth", str(truth))
    assert rc == 2 and "nope.json" in err


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def test_evaluate_localize_accuracy_and_iou(tmp_path, capsys):
    truth = _write_csv(tmp_path / "truth.csv", ["image", "subtype", "xmin", "ymin", "xmax", "ymax"], [
        ("a.jpg", "Neutrophil", 0, 0, 100, 100),
        ("b.jpg", "Neutrophil", 10, 10, 110, 60),
        ("c.jpg", "Lymphocyte", 0, 0, 50, 50),
        ("d.jpg", "Monocyte", 20, 20, 60, 60)])
    pred = _write_csv(tmp_path / "localizations.csv", ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"], [
        ("d.png", "Monocyte", 0.8, 20, 20, 60, 60),  # paired by base name, any order; IoU 1
        ("a.png", "Neutrophil", 0.9, 0, 0, 100, 50),  # half the box: IoU 0.5
        ("b.png", "Lymphocyte", 0.6, 10, 10, 110, 60),  # wrong class, IoU 1
        ("c.png", "Lymphocyte", 0.7, 25, 0, 75, 50)])  # shifted by half: IoU 1/3
    rc, out, err = _evaluate(capsys, "localize", "--pred", str(pred), "--truth", str(truth), "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["n"] == 4
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["per_class_accuracy"] == {"Neutrophil": 0.5, "Lymphocyte": 1.0, "Monocyte": 1.0}
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s["mean_iou"] == pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)

    rc, out, err = _evaluate(capsys, "localize", "--pred", str(pred), "--truth", str(truth))
    assert rc == 0, err
    assert "accuracy 0.750" in out and "balanced accuracy 0.833" in out and "mean 0.708" in out

    perfect = _write_csv(tmp_path / "perfect.csv", ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"], [
        ("a.jpg", "Neutrophil", 1, 0, 0, 100, 100), ("b.jpg", "Neutrophil", 1, 10, 10, 110, 60),
        ("c.jpg", "Lymphocyte", 1, 0, 0, 50, 50), ("d.jpg", "Monocyte", 1, 20, 20, 60, 60)])
    rc, out, err = _evaluate(capsys, "localize", "--pred", str(perfect), "--truth", str(truth), "--json")
    s = json.loads(out)
    assert (s["accuracy"], s["balanced_accuracy"], s["mean_iou"]) == (1.0, 1.0, 1.0)


def test_evaluate_localize_bad_tables(tmp_path, capsys):
    truth = _write_csv(tmp_path / "truth.csv", ["image", "label", "kind", "xmin", "ymin", "xmax", "ymax"],
                       [("a.jpg", "x", "y", 0, 0, 1, 1)])
    pred = _write_csv(tmp_path / "p.csv", ["image", "class", "xmin", "ymin", "xmax"], [("a.jpg", "x", 0, 0, 1)])
    rc, _, err = _evaluate(capsys, "localize", "--pred", str(pred), "--truth", str(truth))
    assert rc == 2 and "no column ymax" in err
    cols = ["image", "class", "xmin", "ymin", "xmax", "ymax"]
    good = _write_csv(tmp_path / "g.csv", cols, [("z.jpg", "x", 0, 0, 1, 1)])
    rc, _, err = _evaluate(capsys, "localize", "--pred", str(good), "--truth", str(truth))
    assert rc == 2 and "which column is the class" in err
    other = _write_csv(tmp_path / "o.csv", cols, [("q.jpg", "x", 0, 0, 1, 1)])
    rc, _, err = _evaluate(capsys, "localize", "--pred", str(good), "--truth", str(other))
    assert rc == 2 and "no image of the predictions" in err
