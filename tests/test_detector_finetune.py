"""Fine-tuning Faster R-CNN and YOLO through the detector training job (``detector.train``): heads
rebuilt for the user's classes (the rows of the classes the base knows by name kept), the model
registered with a threshold chosen on val."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import ModelRegistry

#: the smallest Faster R-CNN of backends/detection/models.py: MobileNetV3-FPN, a 32-wide box head, few proposals
TINY_FRCNN = {"arch": "fasterrcnn_mobilenet_v3_large_fpn", "in_channels": 3, "input_size": 64, "scale": 1.0,
              "anchor_sizes": [8, 12, 16, 24, 32], "box_head": {"conv": [], "fc": [32]},
              "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
              "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_detections_per_img": 50}
#: a tiny YOLO-style detector (backends/detection/yolo.py)
TINY_YOLO = {"arch": "yolo", "in_channels": 3, "input_size": 64, "scale": 1.0, "widths": [8, 16, 32],
             "depths": [0, 1, 1], "stride": 4, "head_channels": 16}


def _sample(seed: int, n_classes: int) -> dict:
    """A 64x64 RGB image with bright squares; labels cycle through 1..n_classes."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 30, (64, 64, 3), dtype=np.uint8)
    boxes, labels = [], []
    for i, (y, x) in enumerate([(6, 6), (6, 38), (38, 6), (38, 38)]):
        img[y:y + 16, x:x + 16] = 200 if i % 2 == 0 else 120
        boxes.append([x, y, x + 16, y + 16])
        labels.append(i % n_classes + 1)
    return {"image": img, "boxes": np.array(boxes, np.float32), "labels": np.array(labels, np.int64)}


@pytest.fixture
def frcnn_base(tmp_path):
    """A tiny Faster R-CNN of classes [cell] saved in a temporary user folder."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, save_detector

    torch.manual_seed(0)
    cfg = {**TINY_FRCNN, "classes": ["cell"]}
    save_detector(build_detector(cfg), cfg, tmp_path / "tiny-frcnn", {"description": "a tiny test base"})
    return ModelRegistry(user_dir=tmp_path).get("tiny-frcnn")


def test_job_for_faster_rcnn_train_is_the_detector_job():
    from napari_cnnvision.backends.dispatch import job_for
    from napari_cnnvision.worker.jobs import JOBS, kind_of, resolve

    frcnn = ModelRegistry().get("bloodcells-frcnn")
    assert frcnn.backend == "fasterrcnn"
    assert job_for(frcnn, "train", "detect") == "detector.train"
    assert job_for(ModelRegistry().get("bloodcells-yolo"), "train", "detect") == "detector.train"
    assert kind_of("detector.train") == "train" and JOBS["yolo.train"] == JOBS["detector.train"]
    assert resolve("yolo.train") is resolve("detector.train")


def test_faster_rcnn_fine_tuned_to_other_classes_is_registered_and_loads(tmp_path, frcnn_base):
    from napari_cnnvision.backends.detection.models import load_detector
    from napari_cnnvision.backends.detection.thresholds import read_thresholds
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import detector_train_job

    base_weights = (tmp_path / "tiny-frcnn" / "weights.pt").read_bytes()
    events = []

    class Rec:
        stop_requested = False

        def __call__(self, fraction, message="", **metrics):
            events.append((fraction, message, metrics))

    res = detector_train_job(Rec(), train=[_sample(1, 2)], val=[_sample(2, 2)], classes=["big", "small"],
                             name="tuned-frcnn", base=card_payload(frcnn_base), out_dir=str(tmp_path),
                             settings={"epochs": 1, "batch_size": 1})
    assert res.epochs_run == 1 and res.model_dir
    card = ModelRegistry(user_dir=tmp_path).get("tuned-frcnn")
    assert card.task == "detect" and card.backend == "fasterrcnn" and card.classes == ["big", "small"]
    t = card.training
    assert t["base_model"] == "tiny-frcnn" and t["settings"]["epochs"] == 1 and t["settings"]["batch_size"] == 1
    # the box predictor (1 class + background before, 2 + background now) was rebuilt, the rest kept
    assert any(k.startswith("roi_heads.box_predictor.cls_score") for k in t["rebuilt_weights"])
    assert not any(k.startswith("backbone") for k in t["rebuilt_weights"])
    assert t["class_head"] == {"kept": [], "new": ["big", "small"], "dropped": ["cell"]}
    assert "map@0.5" in card.metrics["val"] and 0 <= card.metrics["val"]["map@0.5"] <= 1
    model, cfg = load_detector(card.path)
    assert cfg["classes"] == ["big", "small"] and cfg["arch"] == TINY_FRCNN["arch"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    # the score threshold was chosen on val, written next to the weights and read by Detect
    thr = json.loads((tmp_path / "tuned-frcnn" / "thresholds.json").read_text())
    assert thr["chosen_on"].startswith("val") and read_thresholds(card)["score"] == thr["score"]
    assert card.metrics["val"]["score_thresh"] == thr["score"]
    assert any("score threshold" in m for _, m, _ in events)
    # the base is untouched
    assert (tmp_path / "tiny-frcnn" / "weights.pt").read_bytes() == base_weights
    assert json.loads((tmp_path / "tiny-frcnn" / "config.json").read_text())["classes"] == ["cell"]


def test_a_base_of_another_task_is_refused_clearly(tmp_path):
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import detector_train_job

    unet = ModelRegistry().get("nuclei-unet")
    with pytest.raises(InputError, match=r"'nuclei-unet' is a segment model, not a detection model"):
        detector_train_job(train=[_sample(1, 1)], val=[_sample(2, 1)], classes=["cell"], name="nope",
                           base=card_payload(unet), out_dir=str(tmp_path), settings={"epochs": 1})
    assert not (tmp_path / "nope").exists() and not (tmp_path / ".training" / "nope").exists()


def test_the_train_plan_of_a_faster_rcnn_base_is_the_resumable_detector_job():
    """What the Train widget, `train detect --base bloodcells-frcnn` and api.train send (no job run)."""
    from napari_cnnvision.backends.training.plan import TrainOptions, TrainPair, detect_plan

    frcnn = ModelRegistry().get("bloodcells-frcnn")
    pairs = []
    for k in range(2):
        s = _sample(k, 2)
        boxes = s["boxes"][:, [1, 0, 3, 2]]  # y0, x0, y1, x1 as in a Shapes layer
        pairs.append(TrainPair(s["image"], boxes=boxes, classes=["WBC" if c == 1 else "blob" for c in s["labels"]],
                               valid="all", name=f"img{k}"))
    p = detect_plan(pairs, frcnn, TrainOptions(epochs=3, patch_size=256, resume=True), name="my-frcnn")
    assert p.job == "detector.train" and p.kwargs["resume"] is True
    assert p.kwargs["base"]["name"] == "bloodcells-frcnn" and p.kwargs["classes"] == ["WBC", "blob"]
    s = p.kwargs["settings"]
    assert s["epochs"] == 3 and s["learning_rate"] == 6e-4 and "patch_size" not in s  # fine-tune lr; whole images


def test_a_class_the_base_knows_keeps_its_rows_of_the_box_predictor(tmp_path):
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, save_detector
    from napari_cnnvision.backends.training.jobs import _with_classes

    torch.manual_seed(0)
    cfg = {**TINY_FRCNN, "classes": ["RBC", "WBC", "Platelets"]}
    base = build_detector(cfg)
    save_detector(base, cfg, tmp_path / "base")
    model, _, rebuilt, head = _with_classes(tmp_path / "base", ["WBC", "new"])
    assert head == {"kept": ["WBC"], "new": ["new"], "dropped": ["RBC", "Platelets"]}
    a, b = base.state_dict(), model.state_dict()
    w, d = "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight"
    assert w in rebuilt and b[w].shape[0] == 3
    assert torch.equal(a[w][0], b[w][0]) and torch.equal(a[w][2], b[w][1])  # background; WBC: base row 2 -> 1
    assert torch.equal(a[d][8:12], b[d][4:8]) and not torch.equal(a[w][1], b[w][2])  # "new" is fresh


def test_the_warmup_follows_a_time_budget_not_the_epoch_cap():
    """A time-budgeted run (epochs set huge as a cap) warms up over about one epoch, not 100 steps
    of a run that makes a dozen; an epoch-planned run keeps a tenth of its steps (at most 100)."""
    from napari_cnnvision.backends.detection.train import DetectorTrainSettings
    from napari_cnnvision.backends.training.jobs import default_warmup

    timed = DetectorTrainSettings.from_dict({"epochs": 10000, "batch_size": 4, "time_budget": 240})
    assert default_warmup(timed, 10) == 3  # 3 steps per epoch
    planned = DetectorTrainSettings.from_dict({"epochs": 20, "batch_size": 4})
    assert default_warmup(planned, 10) == 6 and default_warmup(planned, 1000) == 100


def _tiny_yolo_base(folder, classes):
    """A tiny YOLO base whose class head tells the classes apart (random rows of std 0.5, biases
    small: an untrained network's features differ little between cells) and whose objectness
    passes a low threshold almost everywhere, saved to ``folder``."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, save_detector

    torch.manual_seed(0)
    cfg = {**TINY_YOLO, "classes": list(classes)}
    base = build_detector(cfg)
    with torch.no_grad():
        base.head.cls.weight.normal_(std=0.5)
        base.head.cls.bias.normal_(std=0.002)
        base.head.obj.bias.fill_(0.0)
    save_detector(base, cfg, folder)
    return base.eval()


def test_a_yolo_base_keeps_the_class_head_rows_of_the_classes_it_knows(tmp_path):
    """Base [A, B, C] set up for [C, A, D]: C's and A's rows (weight and bias) are the base's, D's
    the usual fresh initialization, and at step 0 the model predicts C and A as the base does."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, set_thresholds
    from napari_cnnvision.backends.training.jobs import _with_classes

    base = _tiny_yolo_base(tmp_path / "base", ["A", "B", "C"])
    torch.manual_seed(1)
    model, cfg, rebuilt, head = _with_classes(tmp_path / "base", ["C", "A", "D"])
    torch.manual_seed(1)
    fresh = build_detector({**TINY_YOLO, "classes": ["C", "A", "D"]})
    model.eval()
    assert cfg["classes"] == ["C", "A", "D"] and head == {"kept": ["C", "A"], "new": ["D"], "dropped": ["B"]}
    assert "head.cls.weight" in rebuilt and not any(k.startswith(("backbone", "neck")) for k in rebuilt)
    for part in ("weight", "bias"):
        a, b, f = (getattr(m.head.cls, part).detach() for m in (base, model, fresh))
        assert torch.equal(b[0], a[2]) and torch.equal(b[1], a[0])  # C: base row 2 -> 0; A: 0 -> 1
        assert torch.equal(b[2], f[2]) and not any(torch.equal(b[2], a[i]) for i in range(3))  # D: fresh
    # the network's outputs: boxes and objectness unchanged, C's and A's class logits the base's
    rng = np.random.default_rng(3)
    x = [torch.from_numpy(rng.random((3, 64, 64), dtype=np.float32))]
    with torch.no_grad():
        (bb, ob, cb), (bm, om, cm) = (m.head(m.neck(m.backbone(m._batch(x)[0]))) for m in (base, model))
    assert torch.equal(bb, bm) and torch.equal(ob, om)
    assert torch.allclose(cm[:, 0], cb[:, 2]) and torch.allclose(cm[:, 1], cb[:, 0])
    # the detections: with B (base) and D (new) silenced, the same boxes, scores and classes by name
    with torch.no_grad():
        base.head.cls.bias[1] = model.head.cls.bias[2] = -50.0
    for m in (base, model):
        set_thresholds(m, 0.05)
    with torch.no_grad():
        db, dm = base(x)[0], model(x)[0]
    assert len(db["boxes"]) > 10 and set(db["labels"].tolist()) == {1, 3}  # A and C both detected
    names_b = [["A", "B", "C"][i - 1] for i in db["labels"].tolist()]
    names_m = [["C", "A", "D"][i - 1] for i in dm["labels"].tolist()]
    assert names_m == names_b
    assert torch.allclose(dm["boxes"], db["boxes"]) and torch.allclose(dm["scores"], db["scores"], atol=1e-6)


def test_reordered_classes_move_their_rows_and_the_card_records_the_class_head(tmp_path):
    """The same classes in another order move their rows (they kept the base's order before); the
    fine-tuned YOLO model's card records which classes came from the base and which are new."""
    import torch

    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import _with_classes, detector_train_job

    base = _tiny_yolo_base(tmp_path / "tiny-yolo", ["A", "B", "C"])
    model, _, _, head = _with_classes(tmp_path / "tiny-yolo", ["C", "B", "A"])
    assert head == {"kept": ["C", "B", "A"], "new": [], "dropped": []}
    assert torch.equal(model.head.cls.weight.detach(), base.head.cls.weight.detach()[[2, 1, 0]])
    card = ModelRegistry(user_dir=tmp_path).get("tiny-yolo")
    res = detector_train_job(train=[_sample(1, 3)], val=[_sample(2, 3)], classes=["C", "A", "D"], name="tuned",
                             base=card_payload(card), out_dir=str(tmp_path), settings={"epochs": 1, "batch_size": 1})
    t = ModelRegistry(user_dir=tmp_path).get("tuned").training
    assert res.model_dir and t["base_model"] == "tiny-yolo"
    assert t["class_head"] == {"kept": ["C", "A"], "new": ["D"], "dropped": ["B"]}


def test_a_fine_tune_that_does_not_beat_its_base_keeps_the_base(tmp_path):
    """The base competes as "epoch 0" on the validation images: a learning rate that wrecks the
    network leaves no epoch better than the base, so the new model is the base (weights equal, the
    card and the message say so); a fresh network never reports a kept base."""
    import torch

    from napari_cnnvision.backends.detection.models import build_detector, load_detector, save_detector
    from napari_cnnvision.backends.detection.train import train_detector
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.backends.training.jobs import detector_train_job
    from napari_cnnvision.backends.training.outcome import job_outcome

    torch.manual_seed(0)
    cfg = {**TINY_YOLO, "classes": ["cell"]}
    train, val = [_sample(i, 1) for i in range(4)], [_sample(9, 1)]
    model = build_detector(cfg)
    fresh = train_detector(model, cfg, train, val, None, {"epochs": 8, "batch_size": 2, "learning_rate": 3e-3,
                                                          "warmup_steps": 5})
    assert not fresh.kept_base and fresh.best_epoch >= 1
    base_map = max(fresh.history["val_map"])
    assert base_map > 0.8
    save_detector(model, cfg, tmp_path / "good-base")
    base = ModelRegistry(user_dir=tmp_path).get("good-base")
    events = []

    class Rec:
        stop_requested = False

        def __call__(self, fraction, message="", **metrics):
            events.append((message, metrics))

    res = detector_train_job(Rec(), train=train, val=val, classes=["cell"], name="wrecked",
                             base=card_payload(base), out_dir=str(tmp_path),
                             settings={"epochs": 2, "batch_size": 2, "learning_rate": 50.0, "warmup_steps": 0,
                                       "grad_clip": 0})
    assert res.kept_base and res.best_epoch == 0 and res.epochs_run == 2
    assert max(res.history["val_map"]) < base_map  # the epochs were worse ...
    assert res.metrics["val"]["map@0.5"] == pytest.approx(base_map, abs=1e-3)  # ... the model is the base
    start = [m["base_val_map"] for _, m in events if "base_val_map" in m]
    assert start == [pytest.approx(base_map, abs=1e-3)]
    new, _ = load_detector(tmp_path / "wrecked")
    for k, v in model.state_dict().items():
        assert torch.allclose(new.state_dict()[k].float(), v.float().cpu()), k
    card = ModelRegistry(user_dir=tmp_path).get("wrecked")
    assert card.training["kept_base"] is True and card.training["best_epoch"] == 0
    text = job_outcome(res, "wrecked", "detect").describe()
    assert "keeps the base's weights" in text and "best epoch" not in text and "threshold" not in text
