"""Issue 12's bad input for training, at the backend level (fast, no worker): every case is an
InputError whose message says what to change, raised before anything is built, and the user's
arrays and models are left as they were."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from test_training_data import CENTRES, TINY_YOLO, disks

from napari_cnnvision.backends.training.detection import detection_set
from napari_cnnvision.backends.training.localization import localization_set
from napari_cnnvision.backends.training.naming import check_new_name, free_name
from napari_cnnvision.backends.training.regions import Region
from napari_cnnvision.backends.training.segmentation import segmentation_set
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import ModelRegistry


def refused(match, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises an InputError matching ``match``; the arrays passed are unchanged."""
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in args]
    with pytest.raises(InputError, match=match) as err:
        fn(*args, **kwargs)
    for a, b in zip(args, before):
        if b is not None:
            np.testing.assert_array_equal(a, b)
    return str(err.value)


def painted():
    img, full = disks(CENTRES)
    return img, np.where(np.isin(full, [1, 2, 4]), full, 0)


# -- segmentation: Image + Labels --------------------------------------------------------------

def test_image_and_labels_of_different_shapes():
    img, lab = painted()
    refused("differ in size", segmentation_set, img[:, :100], lab)
    refused("differ in size", segmentation_set, np.stack([img, img]), np.stack([lab] * 3))  # 2 frames, 3 planes
    refused("differ in size", segmentation_set, np.stack([img] * 3, -1)[:120], lab)  # RGB, other height
    refused("must be 2-D", segmentation_set, img[None, None], lab[None, None])


def test_empty_negative_or_float_labels():
    img, lab = painted()
    refused("empty: paint some objects", segmentation_set, img, np.zeros_like(lab))
    refused("negative labels", segmentation_set, img, np.where(lab == 1, -1, lab))
    refused("integer labels", segmentation_set, img, lab.astype(np.float32))


def test_fully_annotated_mask_empty_or_of_another_shape():
    img, lab = painted()
    msg = refused("'fully annotated' mask is empty", segmentation_set, img, lab, valid=np.zeros(img.shape, bool))
    assert "paint" not in msg  # not the empty-labels message
    refused("'fully annotated' mask has shape", segmentation_set, img, lab, valid=np.ones((64, 64), bool))


def test_nan_in_the_annotated_region_is_refused_but_not_elsewhere():
    img, lab = painted()
    ys, xs = np.nonzero(lab)
    bad = img.copy()
    bad[ys[0], xs[0]] = np.nan
    msg = refused("NaN or infinite", segmentation_set, bad, lab)
    assert "frame 0" in msg
    bad = img.copy()
    bad[-1, -1] = np.inf  # outside the painted objects' bounding box: never read
    assert segmentation_set(bad, lab).n_objects == 3


def test_too_little_to_hold_out_for_validation():
    img, lab = painted()
    tiny = np.zeros_like(lab)
    tiny[5:9, 5:9] = 1
    refused("too small", segmentation_set, img, tiny)
    valid = np.zeros(img.shape, bool)
    valid[:100, :100] = True  # one complete region, cut in two: the objects all lie in its training part
    refused("no annotated object lies in the validation part", segmentation_set, img, np.where(lab == 1, 1, 0),
            valid=valid)
    refused("validation fraction", segmentation_set, img, lab, val_fraction=1.0)
    refused("validation fraction", segmentation_set, img, lab, val_fraction=0.0)


# -- detection: Image + Shapes rectangles with a class ---------------------------------------

IMG = np.zeros((100, 120), np.uint8)
BOXES = np.array([[10, 10, 20, 30], [40, 50, 60, 70], [70, 20, 90, 40], [15, 80, 35, 100]], float)
CLASSES = ["RBC", "WBC", "RBC", "Platelets"]


def test_empty_box_layer():
    refused("empty: draw some rectangles", detection_set, IMG, np.zeros((0, 4)), [])


@pytest.mark.parametrize("missing", [None, "", "  ", float("nan"), "nan", "None"])
def test_a_class_name_missing(missing):
    classes = list(CLASSES)
    classes[2] = missing
    msg = refused("1 of 4 boxes have no class name", detection_set, IMG, BOXES, classes)
    assert "box 2" in msg
    refused("4 boxes but 3 class names", detection_set, IMG, BOXES, CLASSES[:3])


def test_boxes_outside_the_image_or_of_zero_area():
    msg = refused("2 box\\(es\\) lie outside the image \\(120x100", detection_set, IMG, BOXES + [0, 0, 0, 60],
                  CLASSES)  # boxes 1 and 3 reach past the right edge
    assert "first: box 1" in msg
    refused("outside", detection_set, IMG, BOXES - 50, CLASSES)  # wholly outside
    refused("outside", detection_set, np.zeros((3, 100, 120), np.uint8), BOXES + [0, 0, 0, 30], CLASSES,
            frames=[0, 1, 2, 2])  # in a stack too
    flat = BOXES.copy()
    flat[1, 2] = flat[1, 0]  # zero height
    flat[3, 3] = flat[3, 1] - 5  # inverted
    msg = refused("2 box\\(es\\) have zero width or height", detection_set, IMG, flat, CLASSES)
    assert "first: box 1" in msg
    nan = BOXES.copy()
    nan[0, 0] = np.nan
    refused("NaN or infinite coordinates", detection_set, IMG, nan, CLASSES)
    # half a pixel over the edge (a rectangle drawn to the border) is fine, clipped
    edge = BOXES.copy()
    edge[3, 3] = 120.4
    ds = detection_set(IMG, edge, CLASSES, val_fraction=0.25)
    assert max(float(s["boxes"][:, 2].max()) + r.x0 for s, r in zip(ds.train + ds.val, ds.train_regions
                                                                     + ds.val_regions)) <= 120


def test_a_stack_needs_the_frame_of_each_box():
    stack = np.zeros((8, 100, 120), np.uint8)
    refused("stack of 8 frames", detection_set, stack, BOXES, CLASSES)  # not taken as 120 channels
    refused("4 boxes but 3 frame indices", detection_set, stack, BOXES, CLASSES, frames=[0, 1, 2])
    refused("frames \\[0, 9\\]", detection_set, stack, BOXES, CLASSES, frames=[0, 0, 9, 9])
    refused("YX, YXC", detection_set, IMG, BOXES, CLASSES, frames=[0, 0, 0, 0])  # frames for a 2-D image


def test_fully_annotated_regions_outside_the_image():
    refused("outside the image", detection_set, IMG, BOXES, CLASSES, valid_regions=[Region(0, 200, 0, 250, 50)])
    refused("in frame 3, the image has 1", detection_set, IMG, BOXES, CLASSES,
            valid_regions=[Region(3, 0, 0, 50, 50)])
    refused("no regions", detection_set, IMG, BOXES, CLASSES, valid_regions=[])
    # a region past the edge is clipped to the image, not refused
    ds = detection_set(IMG, BOXES, CLASSES, valid_regions=[Region(0, 0, 0, 60, 200), Region(0, 60, 0, 140, 200)])
    assert all(r.x1 == 120 and r.y1 <= 100 for r in ds.train_regions + ds.val_regions)


def test_nan_image_for_detection():
    img = np.zeros((100, 120), np.float32)
    img[50, 50] = np.nan
    refused("NaN or infinite values", detection_set, img, BOXES, CLASSES)


def test_fewer_boxes_than_the_validation_split_needs():
    refused("too small", detection_set, IMG, [[10, 10, 20, 20]], ["WBC"])  # one 10-px box: nothing to cut
    refused("validation part", detection_set, IMG, [[10, 10, 90, 90]], ["WBC"])  # the cut leaves a sliver
    refused("validation fraction", detection_set, IMG, BOXES, CLASSES, val_fraction=1.5)


def test_a_single_class_is_a_valid_training_set_and_names_are_stripped():
    ds = detection_set(IMG, BOXES, ["WBC", "WBC ", " WBC", "WBC"], val_fraction=0.25)
    assert ds.classes == ["WBC"]
    labels = np.concatenate([s["labels"] for s in ds.train + ds.val])
    assert len(labels) + ds.dropped == 4 and set(labels.tolist()) == {1}


def test_a_single_class_fine_tunes_a_three_class_base(tmp_path):
    """The head is rebuilt for one class; the card lists it (trained in-process, 1 epoch, tiny net)."""
    from napari_cnnvision.backends.detection.models import build_detector, load_detector, save_detector
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import detector_train_job
    from napari_cnnvision.core.registry import read_card

    cfg = {"arch": "yolo", "classes": ["RBC", "WBC", "Platelets"], **TINY_YOLO}
    base = save_detector(build_detector(cfg), cfg, tmp_path / "base", {"name": "base"})
    img = np.zeros((64, 96), np.uint8)
    img[8:24, 8:24] = img[30:50, 60:80] = 200
    ds = detection_set(img, [[8, 8, 24, 24], [30, 60, 50, 80]], ["WBC", "WBC"], val_fraction=0.4)
    res = detector_train_job(train=ds.train, val=ds.val, classes=ds.classes, name="only-wbc",
                             base=card_payload(read_card(base)), settings={"epochs": 1},
                             out_dir=tmp_path / "models")
    assert load_detector(res.model_dir)[1]["classes"] == ["WBC"]
    assert read_card(res.model_dir).classes == ["WBC"]


# -- non-rectangular shapes in a detection layer (the Train widget's reading of a Shapes layer:
#    widgets/_train_layers.boxes_pair) ---------------------------------------------------------

def _shapes(data, shape_type, classes=None):
    from napari.layers import Shapes

    return Shapes(data, shape_type=shape_type, name="boxes",
                  features={"class": classes} if classes is not None else None)


def _rect(y, x, h, w):
    return np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], float)


@pytest.mark.parametrize("kind", ["ellipse", "polygon", "line", "rotated rectangle"])
def test_non_rectangular_shapes_are_refused(kind):
    from napari.layers import Image

    from napari_cnnvision.widgets._train_layers import boxes_pair

    img = Image(np.zeros((100, 120), np.uint8), name="img")
    rect = _rect(10, 10, 20, 30)
    if kind == "rotated rectangle":
        c = rect.mean(0)
        t = np.deg2rad(30)
        other = (rect - c) @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) + c + [40, 40]
        layer = _shapes([rect, other], ["rectangle", "rectangle"], ["WBC", "RBC"])
    else:
        other = np.array([[50, 50], [60, 80], [80, 60]], float) if kind == "polygon" else np.array(
            [[50, 50], [70, 90]], float)
        layer = _shapes([rect, other], ["rectangle", kind], ["WBC", "RBC"])
    before = [d.copy() for d in layer.data]
    with pytest.raises(InputError, match="not (axis-aligned )?rectangles"):
        boxes_pair(img, layer)
    assert all(np.array_equal(a, b) for a, b in zip(layer.data, before))  # the layer is untouched


def test_a_missing_class_in_a_shapes_layer_reaches_a_clear_message():
    import pandas as pd
    from napari.layers import Image

    from napari_cnnvision.widgets._train_layers import boxes_pair

    img = Image(np.zeros((100, 120), np.uint8), name="img")
    layer = _shapes([_rect(10, 10, 20, 30), _rect(50, 50, 20, 20)], "rectangle")
    layer.features = pd.DataFrame({"class": ["WBC", None]})
    p = boxes_pair(img, layer)
    refused("1 of 2 boxes have no class name", detection_set, p.image, p.boxes, p.classes)


# -- localization: a stack with one rectangle per frame --------------------------------------

STACK = np.zeros((5, 40, 40), np.uint8)
LBOXES = np.array([[2, 2, 10, 10], [5, 5, 20, 25], [1, 1, 30, 30], [0, 0, 8, 8]], float)
LFRAMES = [0, 1, 3, 4]


def test_localization_bad_input():
    refused("empty", localization_set, STACK, np.zeros((0, 4)), [], [])
    refused("2 rectangle\\(s\\) lie outside the image \\(40x40.*first: frame 1", localization_set, STACK,
            LBOXES + [0, 0, 0, 20] * np.array([[0], [1], [1], [0]]), ["a"] * 4, LFRAMES)
    refused("outside", localization_set, STACK, LBOXES + 100, ["a"] * 4, LFRAMES)  # once clipped silently
    flat = LBOXES.copy()
    flat[2, 3] = flat[2, 1]
    refused("1 rectangle\\(s\\) have zero width or height \\(first: frame 3", localization_set, STACK, flat,
            ["a"] * 4, LFRAMES)
    nan = LBOXES.copy()
    nan[0, 0] = np.nan
    refused("NaN", localization_set, STACK, nan, ["a"] * 4, LFRAMES)
    refused("1 of 4 rectangles have no class name \\(first: frame 1", localization_set, STACK, LBOXES,
            ["a", "", "b", "a"], LFRAMES)
    refused("at least 2 frames", localization_set, STACK, LBOXES[:1], ["a"], [0])
    refused("validation fraction", localization_set, STACK, LBOXES, ["a"] * 4, LFRAMES, val_fraction=1.0)
    refused("rectangles lie in frames", localization_set, STACK, LBOXES, ["a"] * 4, [0, 1, 3, 7])
    fstack = STACK.astype(np.float32)
    fstack[3, 20, 20] = np.inf
    refused("NaN or infinite values in an annotated frame", localization_set, fstack, LBOXES, ["a"] * 4, LFRAMES)
    fstack = STACK.astype(np.float32)
    fstack[2, 20, 20] = np.inf  # frame 2 is not annotated: never read
    assert len(localization_set(fstack, LBOXES, ["a"] * 4, LFRAMES).classes) == 1


def test_localization_with_a_single_class():
    ls = localization_set(STACK, LBOXES, ["cell", "cell ", "cell", "cell"], LFRAMES, val_fraction=0.25)
    assert ls.classes == ["cell"] and set(ls.labels.tolist() + ls.val_labels.tolist()) == {0}


# -- names: never overwrite a model silently -------------------------------------------------

def _model(folder, name):
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"name": name, "task": "segment", "backend": "unet"}))
    return folder


def test_a_name_that_exists_is_refused_in_every_form(tmp_path):
    reg = ModelRegistry(user_dir=tmp_path, shipped_dir=os.devnull)
    _model(tmp_path / "mine", "mine")
    msg = refused("exists already; choose another name \\(e.g. 'mine-2'\\)", check_new_name, "mine", reg)
    assert "case" not in msg
    msg = refused("'Mine' exists already \\(in another case", check_new_name, "Mine", reg)
    (tmp_path / "stray-file").write_text("x")  # anything in the user folder counts
    refused("exists already", check_new_name, "stray-file", reg)
    assert free_name("MINE", reg) == "MINE-2" and check_new_name(" mine-2 ", reg) == "mine-2"
    for bad in ("", "   ", "../mine", "a/b", ".hidden", "mine.", "x" * 81, "new model"):
        refused("must start with a letter or digit", check_new_name, bad, reg)
    assert free_name("cells.", reg) == "cells"
    # the shipped models count too (default shipped folder)
    refused("exists already", check_new_name, "nuclei-stardist", ModelRegistry(user_dir=tmp_path))


def test_the_detector_job_refuses_an_existing_name_and_leaves_the_model_as_it_was(tmp_path):
    from napari_cnnvision.backends.training.jobs import detector_train_job

    folder = _model(tmp_path / "mine", "mine")
    (folder / "weights.pt").write_bytes(b"the user's weights")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    ds = detection_set(IMG, BOXES, CLASSES, val_fraction=0.25)
    with pytest.raises(InputError, match="exists already"):
        detector_train_job(train=ds.train, val=ds.val, classes=ds.classes, name="mine", config=TINY_YOLO,
                           settings={"epochs": 1}, out_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing written beside it


@pytest.mark.parametrize("job", ["unet", "localizer"])
def test_the_train_jobs_refuse_an_existing_name_before_training(tmp_path, job):
    """Any caller of the worker jobs (not only the widget and CLI, which check first) gets the
    refusal; the existing model folder is left byte for byte."""
    _model(tmp_path / "mine", "mine")
    before = {p.name: p.read_bytes() for p in (tmp_path / "mine").iterdir()}
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="exists already"):
        if job == "unet":
            from napari_cnnvision.backends.unet.train import train_job

            train_job(None, [img], [img.astype(np.int32)], [img], [img.astype(np.int32)], out_dir=str(tmp_path),
                      name="mine", settings={"epochs": 1})
        else:
            from napari_cnnvision.backends.localizer.job import train_job

            train_job(None, [img, img], np.array([[0, 0, 8, 8]] * 2), np.array([0, 0]), ["a"],
                      out_dir=str(tmp_path), name="mine", settings={"epochs": 1})
    assert {p.name: p.read_bytes() for p in (tmp_path / "mine").iterdir()} == before


# -- validation pairs given apart (instead of the automatic split) ---------------------------

def test_validation_pairs_empty_of_another_kind_size_channels_or_classes():
    from napari_cnnvision.backends.training.plan import TrainPair, detect_plan, localize_plan, segment_plan

    img, lab = painted()
    train = [TrainPair(img, labels=lab, name="t")]
    refused("no validation data", segment_plan, train, val_pairs=[])
    boxes = TrainPair(IMG, boxes=BOXES, classes=CLASSES, name="v")
    refused("validation data: v: segmentation needs a label image", segment_plan, train, val_pairs=[boxes])
    refused("validation data: .*differ in size", segment_plan, train, val_pairs=[TrainPair(img[:, :100], labels=lab)])
    refused("validation data: the annotation layer is empty", segment_plan, train,
            val_pairs=[TrainPair(img, labels=np.zeros_like(lab))])
    refused("validation data: the images have 3 channel", segment_plan, train,
            val_pairs=[TrainPair(np.stack([img] * 3, -1), labels=lab)])
    det = [TrainPair(IMG, boxes=BOXES, classes=CLASSES)]
    refused("validation data: .*detection training needs boxes", detect_plan, det,
            val_pairs=[TrainPair(img, labels=lab)])
    refused("validation data: class\\(es\\) Neutrophil are not in the training data \\(RBC, WBC, Platelets\\)",
            detect_plan, det, val_pairs=[TrainPair(IMG, boxes=BOXES[:1], classes=["Neutrophil"])])
    refused("validation data: the images are of another type", detect_plan, det,
            val_pairs=[TrainPair(IMG.astype(np.float32), boxes=BOXES[:1], classes=["RBC"])])
    stack = np.zeros((4, 48, 48), np.uint8)
    rects = np.array([[4, 4, 20, 24]] * 4, float)
    loc = [TrainPair(stack, boxes=rects, classes=["a", "b"] * 2, frames=np.arange(4))]
    refused("validation data: the frames have shape\\(s\\) \\(40, 48\\), the training frames \\(48, 48\\)",
            localize_plan, loc, val_pairs=[TrainPair(stack[:2, :40], boxes=rects[:2], classes=["a", "b"],
                                                     frames=np.arange(2))])
