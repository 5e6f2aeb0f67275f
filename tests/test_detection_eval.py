"""Detection metrics: COCO mAP via pycocotools, precision / recall at a score threshold."""
import math

import numpy as np
import pytest

from napari_cnnvision.backends.detection.evaluate import box_iou, coco_map, precision_recall

CLASSES = ["RBC", "WBC"]


def _truths():
    rng = np.random.default_rng(3)
    out = []
    for _ in range(4):
        y, x = rng.uniform(0, 300, 6), rng.uniform(0, 400, 6)
        boxes = np.column_stack([y, x, y + 40, x + 60])
        out.append((boxes, np.array([0, 0, 0, 0, 1, 1])))
    return out


def test_perfect_predictions_score_one_and_shifted_ones_less():
    truths = _truths()
    perfect = [(b, c, np.linspace(0.9, 0.5, len(b))) for b, c in truths]
    m = coco_map(perfect, truths, CLASSES)
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["ap50"] == {"RBC": pytest.approx(1.0), "WBC": pytest.approx(1.0)}
    assert m["n_truth"] == 24 and m["n_pred"] == 24

    # shifted by a quarter of the width: IoU 0.6 -> still matched at 0.5, but not at 0.75
    small = [(b + [0, 15, 0, 15], c, s) for b, c, s in perfect]
    ms = coco_map(small, truths, CLASSES)
    assert ms["map50"] == pytest.approx(1.0) and ms["map"] < 0.5
    # shifted by half the width: IoU 1/3, no match at 0.5
    far = [(b + [0, 30, 0, 30], c, s) for b, c, s in perfect]
    assert coco_map(far, truths, CLASSES)["map50"] == pytest.approx(0.0)

    # only the WBC boxes found: RBC AP 0, the mean halves
    wbc_only = [(b[c == 1], c[c == 1], s[c == 1]) for b, c, s in perfect]
    mw = coco_map(wbc_only, truths, CLASSES)
    assert mw["ap50"]["RBC"] == pytest.approx(0.0) and mw["ap50"]["WBC"] == pytest.approx(1.0)
    assert mw["map50"] == pytest.approx(0.5)


def test_right_box_wrong_class_is_no_match_and_a_class_without_truth_is_nan():
    truths = _truths()
    swapped = [(b, 1 - c, np.full(len(b), 0.9)) for b, c in truths]
    assert coco_map(swapped, truths, CLASSES)["map50"] == pytest.approx(0.0)
    m = coco_map([(b, c, np.full(len(b), 0.9)) for b, c in truths], truths, CLASSES + ["Platelets"])
    assert math.isnan(m["ap50"]["Platelets"]) and m["map50"] == pytest.approx(1.0)


def test_precision_recall_counts():
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60.0]]), np.array([0, 0, 0]))]
    pred = [(np.array([[0, 0, 10, 10], [21, 21, 31, 31], [100, 100, 110, 110], [0, 0, 10, 10.0]]),
             np.array([0, 0, 0, 0]), np.array([0.9, 0.8, 0.7, 0.3]))]
    pr = precision_recall(pred, truth, ["a"], score_thresh=0.5)
    assert pr["all"]["tp"] == 2 and pr["all"]["fp"] == 1 and pr["all"]["fn"] == 1
    assert pr["all"]["precision"] == pytest.approx(2 / 3) and pr["all"]["recall"] == pytest.approx(2 / 3)
    pr2 = precision_recall(pred, truth, ["a"], score_thresh=0.2)  # the duplicate counts as a false positive
    assert pr2["all"]["fp"] == 2 and pr2["all"]["tp"] == 2


def test_iou_and_input_checks():
    assert box_iou([[0, 0, 10, 10]], [[0, 5, 10, 15]])[0, 0] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="predictions for"):
        coco_map([], _truths(), CLASSES)
