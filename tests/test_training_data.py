"""Training sets from annotations (backends/training): partial labels, splits, defaults, boxes;
and the training jobs through the compute worker (tiny networks, a few steps)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from napari_cnnvision.backends.training.detection import detection_set
from napari_cnnvision.backends.training.naming import check_new_name, free_name
from napari_cnnvision.backends.training.regions import Region, split_regions, valid_regions
from napari_cnnvision.backends.training.segmentation import segmentation_set
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import ModelRegistry

TINY_UNET = {"depth": 2, "base_filters": 4, "steps_per_epoch": 3, "batch_size": 2, "patch_size": 32,
             "seed_grid": [0.5]}
TINY_YOLO = {"widths": [8, 16, 32], "depths": [0, 1, 1], "stride": 4, "head_channels": 16, "input_size": 128}


def disks(centres, shape=(128, 128), r=7):
    """An image with a disk at each centre and its full instance labels (1..n in order)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    img = (lab > 0) * 1.0 + np.random.default_rng(0).normal(0, 0.1, shape)
    return img.astype(np.float32), lab


# six disks: 1 and 2 painted (top left), 3..6 unpainted and outside their bounding box
CENTRES = [(20, 20), (50, 40), (100, 100), (20, 100), (100, 20), (75, 75)]


def partial():
    img, full = disks(CENTRES)
    painted = np.where(np.isin(full, [1, 2]), full, 0)
    return img, full, painted


def test_partial_labels_use_only_the_bounding_box_of_the_painted_objects():
    img, full, painted = partial()
    ts = segmentation_set(img, painted, val_fraction=0.4)
    regions = ts.train_regions + ts.val_regions
    ys, xs = np.nonzero(painted)
    # the two parts tile exactly the painted objects' bounding box
    assert sum(r.shape[0] * r.shape[1] for r in regions) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    cover = np.zeros(img.shape, bool)
    for r in regions:
        assert not cover[r.slices].any()
        cover[r.slices] = True
    assert cover[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all() and cover.sum() == cover[
        ys.min():ys.max() + 1, xs.min():xs.max() + 1].size
    # the unpainted disks lie wholly outside: none of their pixels is in any crop (as background or else)
    for k in (3, 4, 5, 6):
        assert not (cover & (full == k)).any()
    # the crops hold the image's pixels and the painted labels there
    for crop, mask, r in zip(ts.images + ts.val_images, ts.masks + ts.val_masks, regions):
        np.testing.assert_array_equal(crop, img[r.slices])
        np.testing.assert_array_equal(mask, painted[r.slices])
    assert ts.n_objects == 2 and 10 < ts.object_diameter < 16
    assert "train: 1 crop(s)" in ts.summary() and "val: 1 crop(s)" in ts.summary()
    assert ts.summary().count(" 1 object") == 2 and "objects" not in ts.summary(), ts.summary()  # singular


def test_a_fully_annotated_mask_chooses_the_regions():
    img, full, painted = partial()
    valid = np.zeros(img.shape, bool)
    valid[60:128, 60:128] = True  # disks 3 and 6 are complete there
    valid[:40, :40] = True  # disk 1
    ts = segmentation_set(img, np.where(np.isin(full, [1, 3, 6]), full, 0), valid=valid)
    regs = sorted(ts.train_regions + ts.val_regions, key=lambda r: r.y0)
    assert [(r.y0, r.x0, r.y1, r.x1) for r in regs] == [(0, 0, 40, 40), (60, 60, 128, 128)]


def test_stack_frames_are_split_by_frame_and_defaults_follow_the_objects():
    a, la = disks(CENTRES[:3])
    b, lb = disks(CENTRES[3:])
    ts = segmentation_set(np.stack([a, b, a]), np.stack([la, lb, np.zeros_like(la)]), val_fraction=0.4)
    assert sorted(r.frame for r in ts.train_regions + ts.val_regions) == [0, 1]  # frame 2: nothing painted
    assert len(ts.val_regions) == 1 and len(ts.train_regions) == 1
    d = ts.defaults
    assert d["patch_size"] % 16 == 0 and 32 <= d["patch_size"] <= 128
    many = segmentation_set(*disks([(10 + 20 * i, 10 + 20 * j) for i in range(6) for j in range(6)], r=6))
    assert many.n_objects == 36 and many.defaults["epochs"] < ts.defaults["epochs"]


def test_bad_segmentation_input_is_refused():
    img, full, painted = partial()
    with pytest.raises(InputError, match="differ"):
        segmentation_set(img[:100], painted)
    with pytest.raises(InputError, match="empty"):
        segmentation_set(img, np.zeros_like(painted))
    tiny = np.zeros_like(painted)
    tiny[5:9, 5:9] = 1
    with pytest.raises(InputError, match="too small"):
        segmentation_set(img, tiny)


def test_split_regions_keeps_one_for_training():
    regs = [Region(t, 0, 0, 50, 50) for t in range(3)]
    tr, va = split_regions(regs, [5, 5, 5], 0.9)
    assert len(tr) == 1 and len(va) == 2
    assert valid_regions(np.zeros((2, 8, 8), bool)) == []


def test_boxes_become_detector_samples_in_their_region():
    img = np.zeros((100, 120), np.uint16)
    img[10:20, 10:30] = 1000
    boxes = np.array([[10, 10, 20, 30], [40, 50, 60, 70], [70, 20, 90, 40], [15, 80, 35, 100]], float)
    ds = detection_set(img, boxes, ["rbc", "wbc", "rbc", "platelet"], val_fraction=0.25)
    assert ds.classes == ["rbc", "wbc", "platelet"]
    (tr,), (va,) = ds.train, ds.val
    assert tr["image"].shape[-1] == 3 and tr["image"].dtype == np.float32 and ds.normalization["type"] == "percentile"
    r = ds.train_regions[0]
    assert (r.y0, r.x0) == (10, 10) and ds.val_regions[0].x1 == 100  # the boxes' bounding box, cut on its long side
    assert len(tr["boxes"]) + len(va["boxes"]) + ds.dropped == 4
    word = {1: "1 box;"}.get(len(va["boxes"]), f"{len(va['boxes'])} boxes;")
    assert f"val: 1 crop(s), {word}" in ds.summary() and "1 boxes" not in ds.summary(), ds.summary()
    # boxes are x0, y0, x1, y1 relative to the crop, labels 1..K
    assert tr["boxes"][0].tolist() == [0.0, 0.0, 20.0, 10.0] and tr["labels"][0] == 1
    with pytest.raises(InputError, match="class name"):
        detection_set(img, boxes, ["rbc", "", "rbc", "x"])
    with pytest.raises(InputError, match="outside"):
        detection_set(img, boxes + 100, ["a"] * 4)
    with pytest.raises(InputError, match="zero width"):
        detection_set(img, [[5, 5, 5, 9]], ["a"])


def test_new_names_never_overwrite(tmp_path):
    reg = ModelRegistry(user_dir=tmp_path, shipped_dir=os.devnull)
    (tmp_path / "mine").mkdir()
    with pytest.raises(InputError, match="exists already.*mine-2"):
        check_new_name("mine", reg)
    assert check_new_name(" new ", reg) == "new" and free_name("mine", reg) == "mine-2"
    with pytest.raises(InputError, match="must start"):
        check_new_name("../x", reg)


def _seg_job_kwargs(name, epochs):
    img, full, painted = partial()
    ts = segmentation_set(img, np.where(np.isin(full, [1, 2, 4]), full, 0), val_fraction=0.4)
    return img, {"images": ts.images, "masks": ts.masks, "val_images": ts.val_images, "val_masks": ts.val_masks,
                 "name": name, "settings": {**TINY_UNET, "epochs": epochs}, "data": ts.summary()}


def test_unet_job_from_a_partial_annotation_trains_registers_and_segments(pool):
    from napari_cnnvision import api

    img, kwargs = _seg_job_kwargs("from-labels", 2)
    events = []
    res = pool.run("unet.train", kwargs, on_event=events.append)
    epochs = [e for e in events if "epoch" in e.metrics]
    assert [e.metrics["epoch"] for e in epochs] == [1, 2]
    assert all({"loss", "val_loss", "val_ap50"} <= set(e.metrics) for e in epochs)
    card = ModelRegistry(shipped_dir=os.devnull).get("from-labels")
    assert card.path == res.model_dir and card.task == "segment" and "crop(s)" in card.training["data"]
    out = api.segment(img, card, isolated=False)
    assert out.labels.shape == img.shape

    # Stop mid-training (the same worker): the job returns and registers the best model so far
    _, kwargs = _seg_job_kwargs("stopped", 20)
    events = []
    res = pool.run("unet.train", kwargs, on_event=events.append,
                   should_cancel=lambda: any("epoch" in e.metrics for e in events))
    assert res.stopped and 1 <= res.epochs_run < 20
    card = ModelRegistry(shipped_dir=os.devnull).get("stopped")
    assert card.training["stopped_early"] is True and card.training["epochs"] == res.epochs_run


def test_yolo_job_from_boxes_registers_a_detector_for_the_users_classes(pool):
    from napari_cnnvision.backends.detection.models import load_detector

    rng = np.random.default_rng(1)
    img = rng.integers(0, 40, (128, 128), dtype=np.uint8)
    boxes, classes = [], []
    for i, (y, x) in enumerate([(8, 8), (8, 60), (60, 8), (60, 60), (96, 96), (96, 30)]):
        s = 14 if i % 2 else 22
        img[y:y + s, x:x + s] = 200
        boxes.append([y, x, y + s, x + s])
        classes.append("small" if i % 2 else "big")
    ds = detection_set(img, boxes, classes, val_fraction=0.3)
    events = []
    res = pool.run("yolo.train", {"train": ds.train, "val": ds.val, "classes": ds.classes, "name": "my-boxes",
                                  "config": TINY_YOLO, "settings": {"epochs": 2, "batch_size": 2},
                                  "normalization": ds.normalization, "data": {"summary": ds.summary()}},
                   on_event=events.append)
    assert [e.metrics["epoch"] for e in events if "epoch" in e.metrics] == [1, 2]
    assert all("val_map" in e.metrics and "train_loss" in e.metrics for e in events if "epoch" in e.metrics)
    card = ModelRegistry(shipped_dir=os.devnull).get("my-boxes")
    assert card.task == "detect" and card.backend == "yolo" and card.classes == ["big", "small"]
    assert card.path == res.model_dir and "map@0.5" in card.metrics["val"]
    _, cfg = load_detector(card.path)
    assert cfg["classes"] == ["big", "small"]
    with pytest.raises(Exception, match="exists already"):
        pool.run("yolo.train", {"train": ds.train, "val": ds.val, "classes": ds.classes, "name": "my-boxes",
                                "config": TINY_YOLO, "settings": {"epochs": 1}})


def test_localization_set_takes_one_rectangle_per_annotated_frame():
    from napari_cnnvision.backends.training.localization import localization_set

    stack = np.zeros((5, 40, 40), np.uint8)
    boxes = [[2, 2, 10, 10], [5, 5, 20, 25], [1, 1, 30, 30], [0, 0, 8, 8]]
    ls = localization_set(stack, boxes, ["a", "b", "a", "c"], [0, 1, 3, 4], val_fraction=0.25)
    assert sorted(ls.train_frames + ls.val_frames) == [0, 1, 3, 4] and len(ls.val_frames) == 1  # frame 2: none
    assert ls.classes == ["a", "b", "c"] and len(ls.images) == len(ls.boxes) == len(ls.labels) == 3
    with pytest.raises(InputError, match="more than one rectangle"):
        localization_set(stack, boxes, ["a"] * 4, [0, 0, 3, 4])
    with pytest.raises(InputError, match="image stack"):
        localization_set(stack[0], boxes[:1], ["a"], None)


def test_fine_tuning_a_detector_rebuilds_its_class_head_for_new_classes(tmp_path):
    """A base with 3 classes fine-tuned on 2 others: the backbone weights are the base's, the class head new."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, load_detector, save_detector
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import detector_train_job
    from napari_cnnvision.core.registry import read_card

    cfg = {"arch": "yolo", "classes": ["RBC", "WBC", "Platelets"], **TINY_YOLO}
    base = save_detector(build_detector(cfg), cfg, tmp_path / "base", {"name": "base"})
    img = np.zeros((64, 96), np.uint8)
    img[8:24, 8:24] = img[30:50, 60:80] = 200
    ds = detection_set(img, [[8, 8, 24, 24], [30, 60, 50, 80]], ["nucleus", "mitosis"], val_fraction=0.4)
    res = detector_train_job(train=ds.train, val=ds.val, classes=ds.classes, name="tuned",
                             base=card_payload(read_card(base)), settings={"epochs": 1, "lr": 1e-9},
                             out_dir=tmp_path / "models")
    tuned, tcfg = load_detector(res.model_dir)
    assert tcfg["classes"] == ["nucleus", "mitosis"] and tcfg["widths"] == TINY_YOLO["widths"]
    b_state = load_detector(base)[0].state_dict()
    t_state = tuned.state_dict()
    changed = [k for k in t_state if t_state[k].shape != b_state[k].shape]
    assert changed and all(k.startswith("head.cls") for k in changed)
    first_conv = next(k for k in t_state if k.startswith("backbone") and k.endswith("weight"))
    assert torch.allclose(t_state[first_conv], b_state[first_conv], atol=1e-4)  # kept (lr ~0)
    card = read_card(res.model_dir)
    assert card.training["base_model"] == "base" and any(k.startswith("head.cls") for k in card.training["rebuilt_weights"])
