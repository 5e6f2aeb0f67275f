"""The single-object localizer: model, training, save/load, inference (images, stacks, regions),
the worker job, the Python API and the CLI -- on tiny synthetic data (one bright square or disk)."""
from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cnnvision.backends.localizer import io as lio  # noqa: E402
from napari_cnnvision.backends.localizer.metrics import box_iou, localization_scores  # noqa: E402
from napari_cnnvision.backends.localizer.model import LocalizerConfig, build_localizer  # noqa: E402
from napari_cnnvision.backends.localizer.predict import localize  # noqa: E402
from napari_cnnvision.backends.localizer.train import (LocalizerTrainSettings, augment_batch,  # noqa: E402
                                                        prepare_set, train_localizer)
from napari_cnnvision.core.axes import InputError  # noqa: E402
from napari_cnnvision.core.progress import RecordingProgress  # noqa: E402
from napari_cnnvision.core.registry import CorruptModel, read_card  # noqa: E402
from napari_cnnvision.core.results import LocalizationResult  # noqa: E402

CLASSES = ["square", "disk"]
NORM = {"type": "percentile", "pmin": 1.0, "pmax": 99.8}
SIZE = 64


def draw(shape, cls, cy, cx, r, rng, level=0.8):
    """A noisy image with one bright square (class 0) or disk (class 1); its box (y0, x0, y1, x1)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    if cls == 0:
        m = (abs(yy + 0.5 - cy) <= r) & (abs(xx + 0.5 - cx) <= r)
    else:
        m = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
    im = rng.normal(0.1, 0.05, shape) + level * m
    return im.astype(np.float32), [cy - r, cx - r, cy + r, cx + r]


def synth(n, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    ims, boxes, labels = [], [], []
    for i in range(n):
        r = rng.uniform(7, 13) * size / SIZE
        cy, cx = rng.uniform(r + 1, size - r - 1, 2)
        im, b = draw((size, size), i % 2, cy, cx, r, rng)
        ims.append(im)
        boxes.append(b)
        labels.append(i % 2)
    return ims, np.array(boxes), np.array(labels)


def tiny_settings(augment=None, **kw):
    base = dict(epochs=16, batch_size=16, learning_rate=5e-3, input_size=(SIZE, SIZE), widths=(8, 16, 24, 32),
                ema=0.0, augment={"zoom": 0.1, "shift": 0.1, **(augment or {})}, warmup_epochs=0.5,
                label_smoothing=0.0)
    return LocalizerTrainSettings.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A localizer trained for 64 steps on 64 synthetic images, its val set and its model folder."""
    torch.set_num_threads(1)
    train = prepare_set(*synth(64, 0), (SIZE, SIZE), NORM)
    val_raw = synth(32, 1)
    val = prepare_set(*val_raw, (SIZE, SIZE), NORM)
    rec = RecordingProgress()
    res = train_localizer(train, val, CLASSES, tiny_settings(), progress=rec)
    folder = lio.save_model(tmp_path_factory.mktemp("models") / "tiny-loc", res.model, res.config, CLASSES,
                            training={"box_weight_lambda": 20.0}, metrics={"val_accuracy": res.metrics["accuracy"]})
    return {"res": res, "train": train, "val": val, "val_raw": val_raw, "events": rec.events, "folder": folder}


def _card(folder):
    return read_card(folder, "user")


def test_train_mode_returns_finite_losses_and_eval_mode_predictions():
    model = build_localizer(LocalizerConfig(n_classes=3, input_size=(32, 48), widths=(4, 8, 8)))
    x = torch.randn(5, 3, 32, 48)
    targets = {"labels": torch.tensor([0, 1, 2, 1, 0]), "boxes": torch.rand(5, 4)}
    model.train()
    losses = model(x, targets)
    assert set(losses) == {"loss_class", "loss_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    (losses["loss_class"] + 10 * losses["loss_box"]).backward()
    assert model.class_head.weight.grad is not None and model.box_head[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="targets"):
        model(x)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out["boxes"].shape == (5, 4) and out["probabilities"].shape == (5, 3)
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 1).all()
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(5), atol=1e-5)


def test_augmentation_moves_the_box_with_the_object():
    rng = np.random.default_rng(3)
    ims, boxes, labels = synth(8, 5)
    s = prepare_set(ims, boxes, labels, (SIZE, SIZE), NORM)
    settings = tiny_settings({"intensity": 0.0})
    x, b = augment_batch(torch.from_numpy(s.images), torch.from_numpy(s.boxes), rng, settings)
    assert not torch.equal(x, torch.from_numpy(s.images))  # something moved
    for i in range(8):
        img = x[i, 0].numpy()
        cx, cy, w, h = b[i].numpy() * SIZE
        inside = img[int(cy - h / 4):int(cy + h / 4) + 1, int(cx - w / 4):int(cx + w / 4) + 1]
        assert inside.mean() > 0.6, i  # the object's centre stays inside the transformed box


def test_augmentation_keeps_the_aspect_ratio_without_turns():
    im = np.zeros((SIZE, SIZE), np.float32)
    im[20:30, 10:50] = 1  # a wide bar
    s = prepare_set([im] * 32, [[20, 10, 30, 50]] * 32, [0] * 32, (SIZE, SIZE), NORM)
    x, b = torch.from_numpy(s.images), torch.from_numpy(s.boxes)
    flips = augment_batch(x, b, np.random.default_rng(0), tiny_settings({"turns": False, "zoom": 0, "shift": 0}))[1]
    turns = augment_batch(x, b, np.random.default_rng(0), tiny_settings({"turns": True, "zoom": 0, "shift": 0}))[1]
    assert (flips[:, 2] > flips[:, 3]).all()  # still wide
    assert (turns[:, 2] < turns[:, 3]).any() and (turns[:, 2] > turns[:, 3]).any()


def test_scores():
    sc = localization_scores([0, 0, 1, 1], [0, 1, 1, 1], [[0, 0, 10, 10]] * 4,
                             [[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]], ["a", "b", "c"])
    assert sc["accuracy"] == 0.75
    assert sc["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)  # class c absent from the truth
    assert sc["mean_iou"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert sc["iou_ge_0.5"] == 0.75
    assert box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0] == pytest.approx(1 / 7)


def test_training_learns_class_and_box(trained):
    res, val = trained["res"], trained["val"]
    m = res.metrics
    assert m["accuracy"] >= 0.8 and m["balanced_accuracy"] >= 0.8  # chance: 0.5
    # a constant guess (the mean training box) as the baseline the network must beat
    mean_box = np.tile(trained["train"].boxes.mean(0), (len(val), 1))
    from napari_cnnvision.backends.localizer.model import cxcywh_to_yxyx

    baseline = box_iou(cxcywh_to_yxyx(mean_box, 1, 1), cxcywh_to_yxyx(val.boxes, 1, 1)).mean()
    assert m["mean_iou"] >= 0.45 and m["mean_iou"] > baseline + 0.2
    # one progress event per epoch with train/val losses and val accuracy; the best epoch is kept
    epochs = [e for e in trained["events"] if e.message.startswith("epoch")]
    assert len(epochs) == res.epochs_run == 16
    assert {"train_loss", "val_loss", "val_accuracy", "val_mean_iou"} <= set(epochs[-1].metrics)
    sel = [h["selection"] for h in res.history]
    assert res.best_epoch == int(np.argmax(sel)) + 1


def test_stop_request_ends_training_and_keeps_the_best():
    train = prepare_set(*synth(16, 2), (SIZE, SIZE), NORM)
    rec = RecordingProgress(stop_after=2)  # stop once two epochs were reported
    res = train_localizer(train, train, CLASSES, tiny_settings(epochs=50), progress=rec)
    assert res.stopped and res.epochs_run == 2
    assert res.best_epoch in (1, 2) and not res.model.training


def test_time_budget_ends_training():
    train = prepare_set(*synth(16, 2), (SIZE, SIZE), NORM)
    res = train_localizer(train, None, CLASSES, tiny_settings(epochs=10_000, time_budget=1.0))
    assert 1 <= res.epochs_run < 10_000 and res.seconds < 30


def test_save_load_round_trip(trained, tmp_path):
    folder = trained["folder"]
    card = _card(folder)
    assert (card.task, card.backend, card.classes, card.axes, card.channels) == (
        "localize", "localizer", CLASSES, "YXC", 3)
    assert card.training["box_weight_lambda"] == 20.0
    loaded = lio.load_model(folder, use_cache=False)
    x = torch.from_numpy(trained["val"].images[:4])
    with torch.no_grad():
        a, b = trained["res"].model(x), loaded.model(x)
    assert torch.allclose(a["boxes"], b["boxes"]) and torch.allclose(a["logits"], b["logits"])
    assert lio.load_model(folder) is lio.load_model(folder)  # cached


def test_corrupt_weights_and_untrusted_pickles_are_refused(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained["folder"], bad)
    (bad / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptModel, match="weights.pt.*bad"):
        lio.load_model(bad, use_cache=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (bad / "weights.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CorruptModel, match="weights-only"):
        lio.load_model(bad, use_cache=False)
    torch.save({"x": Evil()}, bad / "weights.pt")
    with pytest.raises(CorruptModel):
        lio.load_model(bad, use_cache=False)
    assert not marker.exists()
    (bad / "config.json").write_text("{broken")
    with pytest.raises(CorruptModel, match="config.json"):
        lio.load_model(bad, use_cache=False)
    with pytest.raises(CorruptModel):
        localize(np.zeros((32, 32)), _card(bad))


def test_localize_any_dtype_channels_and_size(trained):
    card = _card(trained["folder"])
    rng = np.random.default_rng(7)
    im, truth = draw((150, 200), 1, 60, 120, 25, rng)  # larger than the 64x64 input, not square
    variants = {"float": im, "uint8": (np.clip(im, 0, 1) * 255).astype(np.uint8),
                "uint16": (np.clip(im, 0, 1) * 60000).astype(np.uint16),
                "rgb": np.repeat(im[..., None], 3, -1), "rgba": np.dstack([im] * 3 + [np.ones_like(im)])}
    for name, v in variants.items():
        res = localize(v, card)
        assert isinstance(res, LocalizationResult) and res.n_objects == 1, name
        assert res.image_shape == (150, 200) and res.probabilities.shape == (1, 2)
        assert box_iou(res.boxes, [truth])[0] > 0.3, (name, res.boxes, truth)
        assert res.classes == ["disk"], name


def test_tta_result_of_a_mirrored_image_is_the_mirrored_result(trained):
    card = _card(trained["folder"])
    im, _ = draw((70, 90), 0, 30, 35, 12, np.random.default_rng(12))
    a = localize(im, card, tta=True)
    b = localize(im[:, ::-1], card, tta=True)
    y0, x0, y1, x1 = a.boxes[0]
    assert np.allclose(b.boxes[0], [y0, 90 - x1, y1, 90 - x0], atol=1e-3)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    plain = localize(im[:, ::-1], card)
    assert not np.allclose(plain.boxes, b.boxes, atol=1e-3)  # TTA changed something


def test_stacks_give_one_box_per_frame(trained):
    card = _card(trained["folder"])
    rng = np.random.default_rng(8)
    frames = [draw((64, 64), k % 2, 20 + 10 * k, 30, 10, rng) for k in range(3)]
    stack = np.stack([f[0] for f in frames])
    res = localize(stack, card)  # guessed TYX
    assert res.n_objects == 3 and res.has_frames and res.frame.tolist() == [0, 1, 2]
    assert res.frames == [0, 1, 2]
    ious = box_iou(res.boxes, [f[1] for f in frames])
    assert (ious > 0.3).all(), ious
    one = localize(stack, card, frames=[2])
    assert one.frame.tolist() == [2] and np.allclose(one.boxes, res.boxes[2:])
    with pytest.raises(InputError, match="frame axis"):
        localize(stack[None], card, axes="TZYX")


def test_regions_give_one_box_each_in_image_coordinates(trained):
    card = _card(trained["folder"])
    rng = np.random.default_rng(9)
    im = rng.normal(0.1, 0.05, (120, 200)).astype(np.float32)
    a, box_a = draw((60, 60), 0, 25, 30, 10, rng)
    b, box_b = draw((60, 60), 1, 30, 28, 11, rng)
    im[10:70, 20:80] = a
    im[50:110, 130:190] = b
    regions = [(10, 20, 70, 80), (50, 130, 110, 190)]
    res = localize(im, card, regions=regions)
    assert res.n_objects == 2 and res.region.tolist() == [0, 1]
    truth = np.array([np.add(box_a, [10, 20, 10, 20]), np.add(box_b, [50, 130, 50, 130])])
    assert (box_iou(res.boxes, truth) > 0.3).all(), (res.boxes, truth)
    assert (res.boxes[0, [0, 2]] >= 10).all() and (res.boxes[1, [1, 3]] >= 130).all()  # inside their regions
    assert res.classes == ["square", "disk"]
    # regions on a stack: 4-number regions on every frame, 5-number ones on their frame only
    stack = np.stack([im, im])
    rs = localize(stack, card, regions=[regions[0], (1, *regions[1])])
    assert rs.frame.tolist() == [0, 1, 1] and rs.region.tolist() == [0, 0, 1]
    with pytest.raises(InputError, match="region 0"):
        localize(im, card, regions=[(5, 5, 5, 50)])
    with pytest.raises(InputError, match="empty"):
        localize(im, card, regions=[])


def test_bad_inputs_are_clear_errors(trained):
    card = _card(trained["folder"])
    with pytest.raises(InputError, match="too small"):
        localize(np.zeros((1, 40)), card)
    with pytest.raises(InputError, match="channels"):
        localize(np.zeros((40, 40, 5)), card, axes="YXC")
    from dataclasses import replace

    with pytest.raises(InputError, match="not a localizer"):
        localize(np.zeros((40, 40)), replace(card, task="segment", backend="unet"))


def test_predict_job_in_the_compute_worker(trained, pool):
    from napari_cnnvision.backends.dispatch import card_payload, job_for

    card = _card(trained["folder"])
    assert job_for(card, task="localize") == "localizer.predict"
    im = trained["val_raw"][0][3]
    local = localize(im, card)
    events = []
    remote = pool.run("localizer.predict", {"image": im, "model": card_payload(card)}, on_event=events.append)
    assert isinstance(remote, LocalizationResult)
    assert np.allclose(remote.boxes, local.boxes, atol=1e-3) and remote.classes == local.classes
    assert events and events[-1].fraction == 1.0


def test_train_job_in_the_compute_worker(pool, tmp_path):
    from napari_cnnvision.backends.dispatch import job_for

    ims, boxes, labels = synth(12, 4)
    settings = {"epochs": 2, "batch_size": 8, "input_size": [SIZE, SIZE], "widths": [4, 8, 8]}
    events = []
    out = pool.run("localizer.train", {"images": ims[:8], "boxes": boxes[:8], "labels": labels[:8],
                                       "class_names": CLASSES, "val_images": ims[8:], "val_boxes": boxes[8:],
                                       "val_labels": labels[8:], "out_dir": str(tmp_path), "name": "job-loc",
                                       "settings": settings}, on_event=events.append)
    assert out["epochs_run"] == 2 and Path(out["model_dir"]) == tmp_path / "job-loc"
    assert [e.metrics["epoch"] for e in events if "epoch" in e.metrics] == [1, 2]
    card = _card(tmp_path / "job-loc")
    assert job_for(card, "train") == "localizer.train"
    assert card.training["box_weight_lambda"] == 20.0 and "val_accuracy" in card.metrics
    saved = LocalizerTrainSettings.from_model_card(tmp_path / "job-loc")  # the settings, beside the weights
    assert saved == LocalizerTrainSettings.from_dict(settings) and saved.widths == (4, 8, 8)
    assert localize(ims[0], card).n_objects == 1
    with pytest.raises(Exception, match="localizer training settings: unknown setting.*epoch"):
        pool.run("localizer.train", {"images": ims[:2], "boxes": boxes[:2], "labels": labels[:2],
                                     "class_names": CLASSES, "settings": {"epoch": 1}})


def test_api_localize(trained):
    from napari_cnnvision import api

    im = trained["val_raw"][0][4]
    res = api.localize(im, str(trained["folder"]), isolated=False)
    assert res.n_objects == 1 and res.model == "tiny-loc"
    assert np.allclose(res.boxes, localize(im, _card(trained["folder"])).boxes)


def test_cli_localize_writes_one_row_per_image(trained, tmp_path, capsys):
    from skimage.io import imsave

    from napari_cnnvision.cli.main import main

    rng = np.random.default_rng(11)
    inputs = tmp_path / "in"
    inputs.mkdir()
    truths = {}
    for name, cls in (("a.png", 0), ("b.png", 1)):
        im, box = draw((80, 96), cls, 40, 50, 14, rng)
        imsave(inputs / name, (np.clip(im, 0, 1) * 255).astype(np.uint8), check_contrast=False)
        truths[name] = box
    (inputs / "broken.png").write_bytes(b"no png")
    out = tmp_path / "out"
    rc = main(["localize", str(inputs), "--out", str(out), "--model", str(trained["folder"]), "--quiet", "--tta"])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.png" in err  # reported; the batch went on
    rows = list(csv.DictReader(open(out / "localizations.csv")))
    assert [r["image"] for r in rows] == ["a.png", "b.png"]
    assert list(rows[0]) == ["image", "class", "score", "xmin", "ymin", "xmax", "ymax"]
    for r in rows:
        y0, x0, y1, x1 = truths[r["image"]]
        pred = [float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])]
        assert box_iou([pred], [[y0, x0, y1, x1]])[0] > 0.3, r
        assert 0 < float(r["score"]) <= 1
    assert [r["class"] for r in rows] == ["square", "disk"]
    # an --out whose table would overwrite an input is refused before anything runs
    victim = out / "localizations.csv"
    before = victim.read_bytes()
    rc = main(["localize", str(victim), "--out", str(out), "--model", str(trained["folder"]), "--quiet"])
    assert rc == 2 and "overwrite" in capsys.readouterr().err
    assert victim.read_bytes() == before


def test_shipped_wbc_localizer(shared_data):
    from napari_cnnvision.core.registry import ModelRegistry

    card = ModelRegistry().default("localize")
    assert card.name == "wbc-localizer" and card.source == "shipped"
    assert card.classes == ["Neutrophil", "Eosinophil", "Lymphocyte", "Monocyte", "Basophil"]
    assert "box_weight_lambda" in card.training and "val_balanced_accuracy" in card.metrics
    rows = list(csv.DictReader(open(shared_data / "bccd" / "derived" / "wbc_subtype_localization_val.csv")))[:3]
    from napari_cnnvision.core.images import read_image

    for r in rows:
        res = localize(read_image(shared_data / "bccd" / "images" / r["image"]), card)
        assert res.n_objects == 1 and res.image_shape == (480, 640)
        truth = [float(r["ymin"]), float(r["xmin"]), float(r["ymax"]), float(r["xmax"])]
        assert box_iou(res.boxes, [truth])[0] > 0.3, (r, res.boxes)
    json.loads(Path(card.path, "training.json").read_text())


# --- the fast pre-processing and the batched frames give the plain path's results ------------------------

def _plain_localize(image, card, frames_first: bool):
    """The plain path localize() replaced: each frame on its own, reference_input, a batch-1 network call."""
    from napari_cnnvision.backends.localizer.model import cxcywh_to_yxyx
    from napari_cnnvision.backends.localizer.predict import predict_inputs
    from napari_cnnvision.backends.localizer.preprocess import reference_input

    loaded = lio.load_model(card.path)
    cfg = loaded.config
    planes = list(image) if frames_first else [image]
    boxes, probs = [], []
    for plane in planes:
        x = reference_input(plane, cfg.input_size, {k: v for k, v in card.normalization.items() if k != "source"},
                            cfg.in_channels)
        b, p = predict_inputs(loaded.model, x[None])
        h, w = plane.shape[:2]
        boxes.append(np.clip(cxcywh_to_yxyx(b, h, w)[0], 0, [h, w, h, w]))
        probs.append(p[0])
    return np.array(boxes), np.array(probs)


def _assert_same_results(res, boxes, probs):
    assert res.class_ids.tolist() == probs.argmax(1).tolist()
    assert np.abs(res.boxes - boxes).max() <= 1e-4, np.abs(res.boxes - boxes).max()
    assert np.abs(res.probabilities - probs).max() <= 1e-5


def test_to_input_equals_the_plain_recipe_bit_for_bit():
    from napari_cnnvision.backends.localizer.preprocess import percentiles, reference_input, to_input

    rng = np.random.default_rng(3)
    base = rng.normal(0.3, 0.2, (37, 53, 3))
    images = {"uint8": (np.clip(base, 0, 1) * 255).astype(np.uint8),
              "uint16": (np.clip(base, 0, 1) * 60000).astype(np.uint16),
              "int16": (base * 3000).astype(np.int16), "int32": (base * 1e6).astype(np.int32),
              "float32": base.astype(np.float32), "float64": base * 1e3,
              "gray_uint8": (np.clip(base[..., 0], 0, 1) * 255).astype(np.uint8), "gray_float": base[..., 1],
              "rgba": np.dstack([(np.clip(base, 0, 1) * 255).astype(np.uint8), np.full((37, 53), 255, np.uint8)])}
    nan = base[..., 0].astype(np.float32)
    nan[3, 4] = np.nan
    images["nan"] = nan
    norms = [NORM, {"type": "percentile", "pmin": 0.0, "pmax": 100.0}, {"type": "percentile", "pmin": 37.3, "pmax": 62.9},
             {"type": "scale", "factor": 0.01}]
    for name, im in images.items():
        for channels in (3, 1):
            for size in [(32, 32), (64, 80), (37, 53)]:
                for norm in norms:
                    a, b = to_input(im, size, norm, channels), reference_input(im, size, norm, channels)
                    assert a.shape == b.shape == (channels,) + size and a.dtype == b.dtype == np.float32
                    assert a.tobytes() == b.tobytes(), (name, channels, size, norm, np.abs(a - b).max())
    for im in images.values():
        if np.issubdtype(im.dtype, np.floating) and not np.isfinite(im).all():
            continue
        for repeat in (1, 3):
            flat = np.repeat(im[..., :1], repeat, -1).astype(np.float32)
            for q, got in zip((0.0, 1.0, 50.0, 99.8, 100.0), percentiles(im[..., :1], (0.0, 1.0, 50.0, 99.8, 100.0),
                                                                        repeat)):
                assert np.float32(got).tobytes() == np.percentile(flat, q).tobytes(), (im.dtype, repeat, q)


def test_localize_equals_the_plain_path_and_batches_the_frames(trained):
    card = _card(trained["folder"])
    rng = np.random.default_rng(21)
    frames = [draw((70, 90), k % 2, 25 + 3 * k, 30 + 4 * k, 11, rng)[0] for k in range(10)]
    stack = (np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)
    for im in (frames[0], stack[3]):
        _assert_same_results(localize(im, card), *_plain_localize(im, card, False))
    model = lio.load_model(card.path).model
    calls = []
    hook = model.register_forward_hook(lambda m, inp, out: calls.append(len(inp[0])))
    try:
        rec = RecordingProgress()
        res = localize(stack, card, progress=rec)
    finally:
        hook.remove()
    assert calls == [10]  # the 10 frames in one network call, not 10
    assert [e.message for e in rec.events if e.message.startswith("frame 10/10")]  # progress still per frame
    assert res.frame.tolist() == list(range(10))
    _assert_same_results(res, *_plain_localize(stack, card, True))
    from napari_cnnvision.core.progress import Cancelled

    with pytest.raises(Cancelled):  # Cancel still ends a stack between frames
        localize(stack, card, progress=RecordingProgress(stop_after=2))


def test_shipped_wbc_localizer_equals_the_plain_path(shared_data):
    from napari_cnnvision.core.images import read_image
    from napari_cnnvision.core.registry import ModelRegistry

    card = ModelRegistry().get("wbc-localizer")
    rows = list(csv.DictReader(open(shared_data / "bccd" / "derived" / "wbc_subtype_localization_val.csv")))[:4]
    images = [read_image(shared_data / "bccd" / "images" / r["image"]) for r in rows]
    for im in images[:2] + [images[2][..., 1], images[3].astype(np.uint16) * 250]:
        _assert_same_results(localize(im, card), *_plain_localize(im, card, False))
    stack = np.stack(images)
    _assert_same_results(localize(stack, card), *_plain_localize(stack, card, True))
