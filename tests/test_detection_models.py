"""The detector networks (backends/detection/models.py, yolo.py) and their trainer (train.py)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from napari_cnnvision.backends.augment import AugmentSettings  # noqa: E402
from napari_cnnvision.backends.detection.boxap import average_precision  # noqa: E402
from napari_cnnvision.backends.detection.models import (  # noqa: E402
    build_detector, load_detector, save_detector, set_thresholds)
from napari_cnnvision.backends.detection.train import DetectorTrainSettings, train_detector  # noqa: E402
from napari_cnnvision.core.progress import RecordingProgress  # noqa: E402
from napari_cnnvision.core.registry import CorruptModel, read_card  # noqa: E402

TINY = {
    "yolo": {"arch": "yolo", "widths": [8, 16, 16, 32], "depths": [0, 1, 0, 0], "stride": 4, "head_channels": 16},
    "fasterrcnn_mobilenet_v3_large_fpn": {"arch": "fasterrcnn_mobilenet_v3_large_fpn",
                                          "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50},
    "fasterrcnn_resnet50_fpn": {"arch": "fasterrcnn_resnet50_fpn"},
}


def tiny_config(arch, **kw):
    return {**TINY[arch], "classes": ["square", "disc"], "in_channels": 3, "input_size": 64, **kw}


def two_squares(seed=0):
    """A 64x64 RGB image with a bright red square (class 1) and a bright green one (class 2)."""
    rng = np.random.default_rng(seed)
    im = rng.uniform(0, 0.1, (64, 64, 3)).astype(np.float32)
    im[8:24, 10:26, 0] = 1.0
    im[38:56, 36:54, 1] = 1.0
    boxes = np.array([[10, 8, 26, 24], [36, 38, 54, 56]], np.float32)  # x0, y0, x1, y1
    return {"image": im, "boxes": boxes, "labels": np.array([1, 2])}


def _tensors(sample):
    return [torch.from_numpy(sample["image"].transpose(2, 0, 1).copy())]


def _target(sample):
    return [{"boxes": torch.from_numpy(sample["boxes"]), "labels": torch.from_numpy(sample["labels"])}]


@pytest.mark.parametrize("arch", ["yolo", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_build_train_losses_and_eval_convention(arch):
    torch.manual_seed(0)
    model = build_detector(tiny_config(arch))
    s = two_squares()
    model.train()
    losses = model(_tensors(s), _target(s))
    assert isinstance(losses, dict) and len(losses) >= 3
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    set_thresholds(model, 0.0, 0.5)
    with torch.no_grad():
        out = model(_tensors(s) + [torch.rand(3, 40, 50)])
    assert len(out) == 2
    for d, (h, w) in zip(out, [(64, 64), (40, 50)]):
        assert set(d) >= {"boxes", "labels", "scores"}
        assert d["boxes"].shape[1] == 4 and d["boxes"].dtype == torch.float32
        assert d["labels"].dtype == torch.int64 and len(d["labels"]) == len(d["scores"]) == len(d["boxes"])
        if len(d["labels"]):
            assert d["labels"].min() >= 1 and d["labels"].max() <= 2
            assert float(d["boxes"][:, 2].max()) <= w + 1e-3 and float(d["boxes"][:, 3].max()) <= h + 1e-3
            assert bool((d["boxes"][:, 2:] >= d["boxes"][:, :2]).all())


def test_resnet50_variant_builds_without_downloads(monkeypatch):
    import torch.hub

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = build_detector(tiny_config("fasterrcnn_resnet50_fpn", scale=0.5))
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    assert model.transform.scale == 0.5
    image, target = model.transform.resize(torch.rand(3, 40, 60), {"boxes": torch.tensor([[10.0, 4, 30, 20]])})
    assert tuple(image.shape[-2:]) == (20, 30) and target["boxes"].tolist() == [[5.0, 2.0, 15.0, 10.0]]


def test_yolo_train_mode_without_targets_and_empty_targets():
    model = build_detector(tiny_config("yolo"))
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model(_tensors(two_squares()))
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    losses = model(_tensors(two_squares()), empty)
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["loss_obj"]) > 0


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="arch"):
        build_detector({"arch": "nope", "classes": ["a"]})
    with pytest.raises(ValueError, match="classes"):
        build_detector({"arch": "yolo", "classes": []})
    with pytest.raises(ValueError, match="stride"):
        build_detector(tiny_config("yolo", stride=6))


def test_set_thresholds_reaches_the_model():
    yolo = build_detector(tiny_config("yolo"))
    set_thresholds(yolo, 0.7, 0.3)
    assert (yolo.score_thresh, yolo.nms_thresh) == (0.7, 0.3)
    frcnn = build_detector(tiny_config("fasterrcnn_mobilenet_v3_large_fpn"))
    set_thresholds(frcnn, 0.6, None)
    assert frcnn.roi_heads.score_thresh == 0.6 and frcnn.roi_heads.nms_thresh == 0.5
    with pytest.raises(ValueError):
        set_thresholds(yolo, 1.5)
    # a higher score threshold returns a subset of the boxes
    s = two_squares()
    set_thresholds(yolo, 0.0, 0.5)
    yolo.eval()
    with torch.no_grad():
        n_all = len(yolo(_tensors(s))[0]["scores"])
        set_thresholds(yolo, 0.99)
        n_high = len(yolo(_tensors(s))[0]["scores"])
    assert n_all > 0 and n_high < n_all


def test_yolo_training_overfits_two_squares(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("yolo")
    model = build_detector(config)
    sample = two_squares()
    settings = DetectorTrainSettings(epochs=20, batch_size=1, learning_rate=1e-2, warmup_steps=2,
                                     augment=AugmentSettings(flips=False, gain=(1.0, 1.0), offset=0.0), seed=0,
                                     device="cpu", val_every=10)
    prog = RecordingProgress()
    res = train_detector(model, config, [sample], [sample], tmp_path / "m", settings, prog,
                         {"training": {"data": "two squares"}})
    assert res.epochs_run == 20
    epoch_events = [e for e in prog.events if "epoch" in e.metrics]
    assert len(epoch_events) == 20
    assert {"train_loss", "val_loss", "val_map"} <= set(epoch_events[0].metrics)
    assert epoch_events[-1].metrics["val_map"] >= 0.9 and epoch_events[-1].metrics["val_loss"] > 0
    assert epoch_events[-1].metrics["train_loss"] < epoch_events[0].metrics["train_loss"]
    assert res.metrics["val"]["map@0.5"] >= 0.9
    model.eval()
    set_thresholds(model, 0.0)
    with torch.no_grad():
        out = model(_tensors(sample))[0]  # sorted by score
    found = {}
    for b, lab in zip(out["boxes"].numpy(), out["labels"].numpy()):
        found.setdefault(int(lab), b)  # the best box of each class
    assert set(found) == {1, 2}
    for lab, truth in zip((1, 2), sample["boxes"]):
        assert np.abs(found[lab] - truth).max() < 4
    card = read_card(tmp_path / "m")
    assert card.task == "detect" and card.backend == "yolo" and card.classes == ["square", "disc"]
    assert card.training["data"] == "two squares" and card.metrics["val"]["map@0.5"] >= 0.9
    assert DetectorTrainSettings.from_model_card(tmp_path / "m") == settings  # saved beside the weights


def test_stop_request_keeps_the_best_epoch(tmp_path):
    config = tiny_config("yolo")
    sample = two_squares()
    prog = RecordingProgress(stop_after=2)
    res = train_detector(build_detector(config), config, [sample], [sample], None,
                         DetectorTrainSettings(epochs=50, batch_size=1, warmup_steps=1, device="cpu"), prog)
    assert res.stopped and res.epochs_run < 50


def test_checkpoint_resume_continues(tmp_path):
    config = tiny_config("yolo")
    sample = two_squares()
    ck = tmp_path / "run.ckpt"
    s = dict(batch_size=1, warmup_steps=1, device="cpu", checkpoint=str(ck))
    train_detector(build_detector(config), config, [sample], [sample], None, DetectorTrainSettings(epochs=2, **s))
    assert ck.is_file()
    res = train_detector(build_detector(config), config, [sample], [sample], None,
                         DetectorTrainSettings(epochs=4, resume=True, **s), RecordingProgress())
    assert res.epochs_run == 4 and len(res.history["train_loss"]) == 4  # 2 from the checkpoint + 2 new


@pytest.mark.parametrize("arch", ["yolo", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    config = tiny_config(arch, score_thresh=0.0)
    model = build_detector(config).eval()
    folder = save_detector(model, config, tmp_path / "det", {"metrics": {"val": {"map@0.5": 0.5}}})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.json", "weights.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    card = json.loads((folder / "model.json").read_text())
    assert card["task"] == "detect" and card["axes"] == "YXC" and card["channels"] == 3
    assert card["normalization"] == {"type": "scale", "factor": 1 / 255}
    loaded, cfg = load_detector(folder)
    assert cfg["arch"] == arch and cfg["classes"] == ["square", "disc"]
    x = _tensors(two_squares())
    with torch.no_grad():
        a, b = model(x)[0], loaded(x)[0]
    assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["boxes"], b["boxes"])
    # saving again over the folder replaces it
    save_detector(model, {**config, "score_thresh": 0.4}, folder)
    assert load_detector(folder)[1]["score_thresh"] == 0.4


def test_slim_fasterrcnn_options_and_half_weights(tmp_path):
    config = tiny_config("fasterrcnn_mobilenet_v3_large_fpn", anchor_sizes=[8, 16, 32, 64, 128],
                         box_head={"conv": [], "fc": [32]}, weights_dtype="float16", box_batch_size_per_image=16)
    model = build_detector(config).eval()
    assert model.rpn.anchor_generator.sizes[0] == (8, 16, 32, 64, 128)
    assert model.roi_heads.box_predictor.cls_score.in_features == 32
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 16
    folder = save_detector(model, config, tmp_path / "det")
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert state["roi_heads.box_predictor.cls_score.weight"].dtype == torch.float16
    loaded, _ = load_detector(folder)
    assert loaded.roi_heads.box_predictor.cls_score.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_detector({**config, "anchor_sizes": [8, 16]})


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch EVIL_RAN",))


def test_corrupt_or_unsafe_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config("yolo")
    folder = save_detector(build_detector(config), config, tmp_path / "det")
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptModel, match="weights"):
        load_detector(folder)
    torch.save({"x": _Evil()}, folder / "weights.pt")
    with pytest.raises(CorruptModel, match="never loaded"):
        load_detector(folder)
    assert not (tmp_path / "EVIL_RAN").exists()
    with open(folder / "weights.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(CorruptModel):
        load_detector(folder)
    assert not (tmp_path / "EVIL_RAN").exists()
    torch.save({"backbone.nope": torch.zeros(3)}, folder / "weights.pt")
    with pytest.raises(CorruptModel, match="do not fit"):
        load_detector(folder)
    (folder / "weights.pt").unlink()
    with pytest.raises(CorruptModel, match="no weights.pt"):
        load_detector(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CorruptModel, match="config"):
        load_detector(folder)


def test_box_ap_perfect_half_and_none():
    truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array([1, 2])}]
    perfect = [{"boxes": truth[0]["boxes"], "labels": np.array([1, 2]), "scores": np.array([0.9, 0.8])}]
    assert average_precision(perfect, truth, 2)["map"] == pytest.approx(1.0)
    wrong_class = [{"boxes": truth[0]["boxes"], "labels": np.array([2, 1]), "scores": np.array([0.9, 0.8])}]
    assert average_precision(wrong_class, truth, 2)["map"] == 0.0
    one = [{"boxes": truth[0]["boxes"][:1], "labels": np.array([1]), "scores": np.array([0.9])}]
    r = average_precision(one, truth, 2)
    assert r["ap"] == {1: pytest.approx(1.0), 2: 0.0} and r["map"] == pytest.approx(0.5)


SHIPPED_DETECTORS = {"bloodcells-yolo": ("yolo", 0.8), "bloodcells-frcnn": ("fasterrcnn", 0.0)}


@pytest.mark.parametrize("name", SHIPPED_DETECTORS)
def test_shipped_detector_card_and_size(name):
    from napari_cnnvision.core.registry import shipped_models_dir

    folder = shipped_models_dir() / name
    card = read_card(folder, "shipped")
    assert card.task == "detect" and card.backend == SHIPPED_DETECTORS[name][0]
    assert card.classes == ["RBC", "WBC", "Platelets"] and card.axes == "YXC" and card.channels == 3
    t = card.training
    assert "bccd" in t["data"] and t["command"].startswith("python scripts/train_bloodcells_")
    assert t["seconds"] > 0 and "2 CPU cores" in t["hardware"] and "from scratch" in t["pretrained"]
    val = card.metrics["val"]
    assert 0 < val["map@0.5"] <= 1 and set(val["ap@0.5_per_class"]) == {"RBC", "WBC", "Platelets"}
    assert "pycocotools" in val["method"]
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 15 * 2**20  # a few MB
    thr = json.loads((folder / "thresholds.json").read_text())
    assert 0 < thr["score"] < 1 and 0 < thr["nms"] < 1


def test_shipped_yolo_finds_the_cells_of_val_images(shared_data):
    from napari_cnnvision.backends.detection.data import load_split
    from napari_cnnvision.backends.detection.train import detect_samples, samples_from_split
    from napari_cnnvision.core.registry import shipped_models_dir

    torch.set_num_threads(1)
    model, cfg = load_detector(shipped_models_dir() / "bloodcells-yolo")
    split = load_split(shared_data / "bccd", "val", classes=cfg["classes"])
    samples = samples_from_split(split)[:4]
    set_thresholds(model, 0.01)
    preds = detect_samples(model, samples, torch.device("cpu"))
    res = average_precision(preds, samples, 3)
    assert res["map"] >= 0.7, res
    assert res["ap"][2] >= 0.8, res  # the WBC of each image
