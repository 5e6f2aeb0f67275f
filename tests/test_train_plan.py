"""The training request of the widget, the CLI and the API (backends/training/plan.py) and the folder
loader (backends/training/folders.py): numpy only, no job is run here."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import tifffile

from test_training_data import CENTRES, disks

from napari_cnnvision.backends.training.folders import folder_pairs
from napari_cnnvision.backends.training.plan import (MANY_EPOCHS, SCALE_ZOOM, TrainOptions, TrainPair, detect_plan,
                                                     localize_plan, segment_plan, settings_fields,
                                                     upsampling_choices)
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import ModelRegistry


def _pairs():
    img1, lab1 = disks(CENTRES)  # 128 x 128, 6 objects
    img2, lab2 = disks([(20, 20), (40, 60), (60, 20)], shape=(80, 96))
    return [TrainPair(img1, labels=lab1, valid="all", name="a"), TrainPair(img2, labels=lab2, valid="all", name="b")]


def test_several_pairs_of_different_sizes_are_split_by_image_and_never_train_on_padding():
    from napari_cnnvision.backends.unet.train import UNetTrainSettings, train_job

    pairs = _pairs()
    p = segment_plan(pairs, None, TrainOptions(epochs=3, val_fraction=0.3), name="new")
    assert p.job == "unet.train" and p.stop_after is None
    k = p.kwargs
    assert set(k) - {"name"} <= set(inspect.signature(train_job).parameters)
    crops = k["images"] + k["val_images"]
    masks = k["masks"] + k["val_masks"]
    # whole images (valid "all"), each one in train or val, at its own size: no padding
    assert sorted(c.shape for c in crops) == [(80, 96), (128, 128)]
    for c, m in zip(crops, masks):
        src = next(q for q in pairs if q.image.shape == c.shape)
        np.testing.assert_array_equal(c, src.image)
        np.testing.assert_array_equal(m, src.labels)
    assert k["settings"]["epochs"] == 3 and k["init_folder"] is None and k["settings"]["learning_rate"] == 1e-3
    UNetTrainSettings.from_dict(k["settings"])  # valid settings of the trainer
    assert "a" in k["data"] and "b" in k["data"] and "9 objects" in k["data"]
    assert "resume" not in k


def test_partial_labels_keep_their_bounding_box_across_pairs():
    img, full = disks(CENTRES)
    painted = np.where(np.isin(full, [1, 2]), full, 0)
    img2, lab2 = disks([(20, 20), (60, 60)], shape=(96, 96))
    p = segment_plan([TrainPair(img, labels=painted), TrainPair(img2, labels=lab2)], None,
                     TrainOptions(val_fraction=0.4))
    crops = p.kwargs["images"] + p.kwargs["val_images"]
    ys, xs = np.nonzero(painted)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) in [c.shape for c in crops]
    assert all(c.shape[0] < 96 for c in crops)  # only the annotated boxes, never a whole (padded) frame


def test_stardist_base_routes_to_its_trainer_with_the_same_kwargs_and_fine_tune_rate():
    reg = ModelRegistry()
    card = reg.get("nuclei-stardist")
    p = segment_plan(_pairs(), card, TrainOptions(minutes=2), name="he")
    assert p.job == "stardist.train" and p.kwargs["init_folder"]["path"] == card.path  # the card payload
    s = p.kwargs["settings"]
    assert s["learning_rate"] == 3e-4 and "upsampling" not in s
    assert s["steps_per_epoch"] == 50 and s["patch_size"] >= 128  # the shipped H&E recipe's, not 20 x 80
    # a time budget: in the trainer's settings where they have one, else the caller stops it
    from napari_cnnvision.backends.stardist.train import StarDistTrainSettings

    own = "time_budget" in settings_fields("stardist.train")
    assert s["epochs"] == MANY_EPOCHS
    assert (s.get("time_budget"), p.stop_after) == ((120, None) if own else (None, 120))
    StarDistTrainSettings.from_dict(s)
    with pytest.raises(InputError, match="fresh U-Net"):
        segment_plan(_pairs(), card, TrainOptions(upsampling="bilinear"))
    from napari_cnnvision.backends.stardist.train import train_job

    resumed = segment_plan(_pairs(), card, TrainOptions(resume=True))  # StarDist runs resume too
    assert resumed.kwargs["resume"] is True and set(resumed.kwargs) <= set(inspect.signature(train_job).parameters)


def test_fresh_unet_upsampling_choices_and_augmentation_choices():
    from napari_cnnvision.backends.augment import AugmentSettings

    choices = upsampling_choices()
    assert {"nearest", "bilinear", "transposed", "unpool"} <= set(choices)  # bed-of-nails offered too
    from napari_cnnvision.backends.unet.train import UNetTrainSettings

    for c in choices:  # each offered choice is one the U-Net trainer takes
        assert UNetTrainSettings(upsampling=c).upsampling == c
    p = segment_plan(_pairs(), None, TrainOptions(upsampling="transposed", intensity=False, scale=True, flips=False,
                                                  turns=False))
    s = p.kwargs["settings"]
    assert s["upsampling"] == "transposed"
    a = AugmentSettings(**s["augment"])
    assert a.flips is False and tuple(a.gain) == (1.0, 1.0) and a.offset == 0 and a.zoom == SCALE_ZOOM
    with pytest.raises(InputError, match="upsampling must be one of"):
        segment_plan(_pairs(), None, TrainOptions(upsampling="cubic"))
    with pytest.raises(InputError, match="not both"):
        segment_plan(_pairs(), None, TrainOptions(epochs=2, minutes=1))


def _boxes_image(seed, shape=(96, 96)):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, shape, dtype=np.uint8)
    boxes, classes = [], []
    for i, (y, x) in enumerate([(8, 8), (8, 50), (50, 8), (50, 50)]):
        s = 12 if i % 2 else 20
        img[y:y + s, x:x + s] = 200
        boxes.append([y, x, y + s, x + s])
        classes.append("small" if i % 2 else "big")
    return img, np.array(boxes, float), classes


def test_detection_pairs_a_time_budget_in_the_trainer_and_resume():
    from napari_cnnvision.backends.detection.train import DetectorTrainSettings
    from napari_cnnvision.backends.training.jobs import detector_train_job

    pairs = []
    for k, shape in enumerate([(96, 96), (80, 112)]):
        img, b, c = _boxes_image(k, shape)
        pairs.append(TrainPair(img, boxes=b, classes=c, valid="all", name=f"img{k}"))
    p = detect_plan(pairs, None, TrainOptions(minutes=0.5, resume=True), name="det")
    assert p.job == "yolo.train" and p.stop_after is None
    s = p.kwargs["settings"]
    assert s["time_budget"] == 30 and s["epochs"] == MANY_EPOCHS and s["learning_rate"] == 2e-3
    DetectorTrainSettings.from_dict(s)
    assert set(p.kwargs) - {"resume"} <= set(inspect.signature(detector_train_job).parameters)
    assert p.kwargs["resume"] is True and p.kwargs["classes"] == ["big", "small"]
    n = sum(len(x["boxes"]) for x in p.kwargs["train"] + p.kwargs["val"])
    assert n == 8 and len(p.kwargs["train"]) == len(p.kwargs["val"]) == 1  # whole images split
    # boxes outside an image are named by the pair
    bad = TrainPair(pairs[0].image, boxes=np.array([[0, 0, 10, 200.0]]), classes=["big"], name="img9")
    with pytest.raises(InputError, match="img9: .*outside the image"):
        detect_plan(pairs + [bad])


def test_localizer_fine_tunes_a_localizer_base_and_has_a_time_budget_of_its_own():
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 30, (6, 48, 48), dtype=np.uint8)
    boxes = np.array([[4 + t, 4, 20 + t, 24] for t in range(6)], float)
    pair = TrainPair(stack, boxes=boxes, classes=["a", "b"] * 3, frames=np.arange(6))
    p = localize_plan([pair], None, TrainOptions(minutes=1, turns=False))
    assert p.job == "localizer.train" and p.kwargs["settings"]["time_budget"] == 60 and p.stop_after is None
    assert p.kwargs["settings"]["augment"]["turns"] is False
    assert "base" not in p.kwargs and p.kwargs["settings"]["learning_rate"] == 2e-3  # fresh
    tuned = localize_plan([pair], ModelRegistry().get("wbc-localizer"), TrainOptions(epochs=3))
    assert tuned.job == "localizer.train" and tuned.kwargs["base"]["name"] == "wbc-localizer"
    assert tuned.kwargs["settings"]["learning_rate"] == 6e-4 and tuned.kwargs["settings"]["epochs"] == 3
    with pytest.raises(InputError, match="not a localize model"):
        localize_plan([pair], ModelRegistry().get("nuclei-unet"))


def _folders(tmp_path, n=2, mask_names=None):
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    for k in range(n):
        img, lab = disks([(12, 12), (30, 40), (50, 20)][:3 - k], shape=(64, 64))
        tifffile.imwrite(img_dir / f"im{k}.tif", img)
        tifffile.imwrite(mask_dir / f"{(mask_names or {}).get(k, f'im{k}')}.tif", lab.astype(np.uint16))
    return img_dir, mask_dir


def test_folder_pairs_from_masks_and_from_a_coco_file(tmp_path):
    img_dir, mask_dir = _folders(tmp_path)
    pairs = folder_pairs("segment", img_dir, masks=mask_dir)
    assert [p.name for p in pairs] == ["im0.tif", "im1.tif"] and all(p.valid == "all" for p in pairs)
    assert pairs[0].labels.max() == 3 and pairs[0].image.shape == (64, 64)
    boxes = folder_pairs("detect", img_dir, masks=mask_dir)  # masks -> boxes of class "object"
    assert len(boxes[0].boxes) == 3 and set(boxes[0].classes) == {"object"}
    coco = {"images": [{"id": 1, "file_name": "im0.tif", "height": 64, "width": 64}],
            "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    d = folder_pairs("detect", img_dir, annotations=tmp_path / "ann.json", fmt="coco")
    assert len(d) == 1 and d[0].classes == ["cell"]
    np.testing.assert_allclose(d[0].boxes, [[6, 5, 18, 15]])  # (y0, x0, y1, x1)


def test_folder_bad_inputs(tmp_path):
    img_dir, mask_dir = _folders(tmp_path, mask_names={1: "other"})
    with pytest.raises(InputError, match="exactly one of"):
        folder_pairs("segment", img_dir, masks=mask_dir, annotations=mask_dir)
    with pytest.raises(InputError, match="exactly one of"):
        folder_pairs("segment", img_dir)
    with pytest.raises(InputError, match="does not exist"):
        folder_pairs("segment", tmp_path / "nope", masks=mask_dir)
    with pytest.raises(InputError, match="1 image.*no mask TIFF.*im1.tif"):
        folder_pairs("segment", img_dir, masks=mask_dir)
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(InputError, match="unknown annotation format 'xml'"):
        folder_pairs("detect", img_dir, annotations=tmp_path / "ann.json", fmt="xml")
    with pytest.raises(InputError, match="holds coco annotations, not voc"):
        folder_pairs("detect", img_dir, annotations=tmp_path / "ann.json", fmt="voc")


def test_api_train_inputs_arrays_complete_or_partial_and_folders(tmp_path):
    from napari_cnnvision.api import _train_pairs

    img, lab = disks(CENTRES)
    pairs = _train_pairs("segment", [img, img], [lab, lab], None)
    assert len(pairs) == 2 and all(p.valid == "all" for p in pairs)
    assert _train_pairs("segment", img, lab, None, partial=True)[0].valid is None
    det = _train_pairs("detect", [img], [{"boxes": [[1, 2, 10, 12]], "classes": ["a"]}], None)
    assert det[0].classes == ["a"] and det[0].boxes.shape == (1, 4)
    with pytest.raises(InputError, match="2 images but 1 annotations"):
        _train_pairs("segment", [img, img], [lab], None)
    img_dir, mask_dir = _folders(tmp_path)
    assert len(_train_pairs("segment", str(img_dir), str(mask_dir), None)) == 2  # a folder of TIFFs: masks


def test_bad_settings_are_refused_before_any_job():
    with pytest.raises(InputError, match="depth must be 1..6"):
        segment_plan(_pairs(), None, TrainOptions(extra={"depth": 9}))
    with pytest.raises(InputError, match="unknown setting"):
        segment_plan(_pairs(), None, TrainOptions(extra={"no_such_thing": 1}))
    with pytest.raises(InputError, match="patch_size 36 does not fit"):
        segment_plan(_pairs(), None, TrainOptions(patch_size=36))


def test_validation_pairs_of_their_own_replace_the_split_in_every_task():
    pairs = _pairs()
    img3, lab3 = disks([(20, 30), (50, 50)], shape=(72, 72))
    val = [TrainPair(img3, labels=lab3, valid="all", name="held out")]
    auto = segment_plan(pairs, None, TrainOptions(val_fraction=0.3))
    assert "validation: an automatic 30% split" in auto.summary and auto.kwargs["val_images"]
    p = segment_plan(pairs, None, TrainOptions(val_fraction=0.3), val_pairs=val)
    k = p.kwargs
    # every training pair trains (whole, unsplit), the given pair validates
    assert sorted(c.shape for c in k["images"]) == [(80, 96), (128, 128)]
    assert len(k["val_images"]) == 1
    np.testing.assert_array_equal(k["val_images"][0], img3)
    np.testing.assert_array_equal(k["val_masks"][0], lab3)
    assert p.summary.endswith("val: 1 crop(s), 5184 px, 2 objects; validation: 1 pair of its own (held out)")
    assert "held out" in k["data"]
    # detection: the validation boxes' classes are the training ids of their names (in another order here)
    det = []
    for k in range(2):
        img, b, c = _boxes_image(k)
        det.append(TrainPair(img, boxes=b, classes=c, valid="all", name=f"img{k}"))
    vimg, vb, vc = _boxes_image(5)
    vpair = TrainPair(vimg, boxes=vb[1:], classes=vc[1:], valid="all", name="val img")  # small, big, small
    p = detect_plan(det, None, TrainOptions(), val_pairs=[vpair])
    assert p.kwargs["classes"] == ["big", "small"] and len(p.kwargs["train"]) == 2 and len(p.kwargs["val"]) == 1
    assert sum(len(s["boxes"]) for s in p.kwargs["train"]) == 8
    assert p.kwargs["val"][0]["labels"].tolist() == [2, 1, 2]
    assert p.summary.endswith("validation: 1 pair of its own (val img)")
    # localization: every annotated frame of the training stack trains; labels by class name
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 30, (6, 48, 48), dtype=np.uint8)
    boxes = np.array([[4 + t, 4, 20 + t, 24] for t in range(6)], float)
    lpair = TrainPair(stack, boxes=boxes, classes=["a", "b"] * 3, frames=np.arange(6))
    lval = TrainPair(stack[:3], boxes=boxes[:3], classes=["b", "b", "a"], frames=np.arange(3))
    p = localize_plan([lpair], None, TrainOptions(), val_pairs=[lval])
    assert len(p.kwargs["images"]) == 6 and len(p.kwargs["val_images"]) == 3
    assert p.kwargs["class_names"] == ["a", "b"] and p.kwargs["val_labels"].tolist() == [1, 1, 0]
    assert "train: 6 frame(s); val: 3 frame(s)" in p.summary


def test_api_train_takes_validation_folders_and_arrays(tmp_path, monkeypatch):
    from napari_cnnvision import api

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    img_dir, mask_dir = _folders(tmp_path / "train")
    vimg, vmask = _folders(tmp_path / "val", n=1)
    seen = []

    class _Pool:  # the request only: no worker
        def run(self, job, kwargs, **_):
            seen.append((job, kwargs))
            raise InputError("stopped before training")

    monkeypatch.setattr(api, "_worker_pool", lambda: _Pool())
    with pytest.raises(InputError, match="stopped before training"):
        api.train("segment", img_dir, mask_dir, name="with-val", val_images=vimg, val_annotations=vmask)
    k = seen[-1][1]
    assert len(k["images"]) == 2 and len(k["val_images"]) == 1 and "(im0.tif)" in k["data"]
    img, lab = disks(CENTRES)
    with pytest.raises(InputError, match="stopped before training"):
        api.train("segment", img_dir, mask_dir, name="with-val", val_images=img, val_annotations=lab)
    assert seen[-1][1]["val_images"][0].shape == (128, 128)
    with pytest.raises(InputError, match="validation data: val_annotations without val_images"):
        api.train("segment", img_dir, mask_dir, name="with-val", val_annotations=vmask)
    with pytest.raises(InputError, match="validation data: .*does not exist"):
        api.train("segment", img_dir, mask_dir, name="with-val", val_images=tmp_path / "nope", val_annotations=vmask)
    assert len(seen) == 2


def test_an_epoch_of_a_time_budget_has_no_total():
    from napari_cnnvision.backends.training.epochs import epoch_message

    assert epoch_message(3, 20) == "epoch 3/20"
    assert epoch_message(3, MANY_EPOCHS) == epoch_message(3, MANY_EPOCHS + 5) == "epoch 3"
