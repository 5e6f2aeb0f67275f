"""The trainers' settings (backends/settings.py): one naming, validated, saved beside the weights,
and written atomically (training.json, checkpoints)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_cnnvision.backends.augment import AugmentSettings
from napari_cnnvision.backends.settings import save_training_json
from napari_cnnvision.backends.stardist import torch_train as T
from napari_cnnvision.backends.stardist.train import StarDistTrainSettings
from napari_cnnvision.backends.unet.train import UNetTrainSettings
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.registry import shipped_models_dir

ALL = [StarDistTrainSettings, UNetTrainSettings, T.TorchTrainSettings]


@pytest.mark.parametrize("cls", ALL)
def test_one_naming_for_the_shared_settings(cls):
    s = cls()
    for name in ("learning_rate", "batch_size", "patch_size", "seed", "pmin", "pmax", "augment"):
        assert hasattr(s, name), name
    for former in ("lr", "batch", "patch", "scale_augment", "basedir", "out"):
        assert not hasattr(s, former), former
    assert isinstance(s.augment, AugmentSettings)


@pytest.mark.parametrize("cls,kw,match", [
    (StarDistTrainSettings, {"learning_rate": -1e-3}, "learning_rate must be a number > 0"),
    (UNetTrainSettings, {"learning_rate": float("nan")}, "learning_rate"),
    (StarDistTrainSettings, {"epochs": 0}, "epochs must be a whole number >= 1"),
    (UNetTrainSettings, {"steps_per_epoch": 2.5}, "steps_per_epoch"),
    (T.TorchTrainSettings, {"steps": 0}, "steps must be"),
    (UNetTrainSettings, {"batch_size": 0}, "batch_size"),
    (StarDistTrainSettings, {"patch_size": (100, 96)}, r"multiple of 16 .*100 -> 96 or 112"),
    (StarDistTrainSettings, {"patch_size": (80, 80), "grid": (4, 4)}, "multiple of 32"),
    (UNetTrainSettings, {"patch_size": 100, "depth": 3}, "multiple of 8"),
    (UNetTrainSettings, {"patch_size": (64, 32)}, "square"),
    (T.TorchTrainSettings, {"patch_size": 100}, "multiple of 16"),
    (T.TorchTrainSettings, {"net": {"grid": 3}}, "net.grid"),
    (StarDistTrainSettings, {"grid": (3, 2)}, "grid must be two powers of two"),
    (StarDistTrainSettings, {"pmin": 99.9, "pmax": 1.0}, "pmin < pmax"),
    (UNetTrainSettings, {"augment": {"zoom": -0.5}}, "augment.zoom"),
    (UNetTrainSettings, {"augment": {"zom": 0.5}}, "augment"),
    (UNetTrainSettings, {"upsampling": "cubic"}, "upsampling"),
    (UNetTrainSettings, {"seed_grid": (0.5, 1.5)}, "seed_grid"),
    (T.TorchTrainSettings, {"save_at": (1.0, 0.5)}, "save_at"),
    (T.TorchTrainSettings, {"ema": 1.0}, "ema"),
])
def test_bad_values_are_clear_input_errors(cls, kw, match):
    with pytest.raises(InputError, match=match) as e:
        cls.from_dict(kw)
    assert str(e.value).startswith(cls.label)
    with pytest.raises(InputError, match=match):  # made directly, too
        cls(**kw)


def test_a_changed_value_is_checked_by_validate_and_the_trainer():
    s = UNetTrainSettings(patch_size=64, depth=2)
    s.learning_rate = 0
    with pytest.raises(InputError, match="learning_rate"):
        s.validate()
    from napari_cnnvision.backends.unet.train import train_unet

    with pytest.raises(InputError, match="learning_rate"):  # before any data is touched
        train_unet([np.zeros((32, 32))], [np.zeros((32, 32), np.int32)], [], [], "unused", "x", s)


def test_unknown_settings_are_named():
    with pytest.raises(InputError, match="unknown setting.*epoch_count.*known: .*epochs"):
        StarDistTrainSettings.from_dict({"epoch_count": 3})


@pytest.mark.parametrize("s", [
    StarDistTrainSettings(grid=(1, 1), patch_size=(128, 96), augment=AugmentSettings(zoom=0.25), save_every=10,
                          area_sampling=True, learning_rate=5e-5, seed=3),
    UNetTrainSettings(class_weights=(1, 2, 3), seed_grid=(0.4, 0.6), augment=AugmentSettings(flips=False),
                      patch_size=96, learning_rate=5e-4, upsampling="nearest"),
    T.TorchTrainSettings(net=T.TorchStarDistConfig(grid=1, n_rays=16), save_at=(0.25, 1.0), time_budget=60.0,
                         patch_size=128, batch_size=4, augment=AugmentSettings(gain=(0.8, 1.2), offset=0.0)),
])
def test_json_round_trip(s, tmp_path):
    cls = type(s)
    assert s != cls()  # not the defaults
    back = cls.from_json(s.to_json())
    assert back == s and type(back.augment) is AugmentSettings
    assert all(isinstance(getattr(back, f), tuple) for f in ("patch_size", "grid", "class_weights", "save_at")
               if isinstance(getattr(s, f, None), tuple))
    save_training_json(tmp_path, s, history={"loss": [1.0]})
    assert cls.from_training_json(tmp_path) == s == cls.from_training_json(tmp_path / "training.json")
    assert json.loads((tmp_path / "training.json").read_text())["history"] == {"loss": [1.0]}


def test_files_with_the_former_names_still_load():
    # the shipped U-Net's training.json and card were written with "lr" (and stay untouched)
    folder = shipped_models_dir() / "nuclei-unet"
    s = UNetTrainSettings.from_training_json(folder)
    assert s.learning_rate == 5e-4 and s.epochs == 40 and s.patch_size == 128
    card = json.loads((folder / "model.json").read_text())
    assert UNetTrainSettings.from_dict(card["training"]["settings"]) == s
    # a torch checkpoint's settings and a StarDist run's training.json from before the rename
    t = T.TorchTrainSettings.from_dict({"patch": 64, "batch": 2, "lr": 1e-3, "net": {"grid": 2, "n_rays": 16}})
    assert (t.patch_size, t.batch_size, t.learning_rate, t.net.n_rays) == (64, 2, 1e-3, 16)
    sd = StarDistTrainSettings.from_dict({"scale_augment": 0.25, "patch_size": [256, 256], "grid": [2, 2]})
    assert sd.augment.zoom == 0.25 and sd.patch_size == (256, 256) and sd.grid == (2, 2)


# --------------------------------------------------------------------------- atomic writes
class _HalfFile:
    """A file that fails half-way through a write, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_training_json_is_written_atomically(tmp_path, monkeypatch):
    s = StarDistTrainSettings(epochs=7)
    save_training_json(tmp_path, s, history={})
    before = (tmp_path / "training.json").read_bytes()
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfFile(real(fd, *a, **k)))
    with pytest.raises(OSError, match="No space"):
        save_training_json(tmp_path, StarDistTrainSettings(epochs=9), history={"loss": [0.5] * 1000})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["training.json"]  # no temp file left
    assert (tmp_path / "training.json").read_bytes() == before  # the older file, whole
    assert StarDistTrainSettings.from_training_json(tmp_path).epochs == 7


def test_a_failed_checkpoint_save_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_050.npz"
    T.save_checkpoint(path, [np.ones((3, 3), np.float32)], {"step": 1})

    def fails_half_way(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", fails_half_way)
    with pytest.raises(OSError, match="No space"):
        T.save_checkpoint(path, [np.zeros((3, 3), np.float32)], {"step": 2})
    with pytest.raises(OSError, match="No space"):
        T.save_checkpoint(tmp_path / "ckpt_100.npz", [np.zeros(1)], {"step": 3})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt_050.npz"]
    weights, meta = T.load_checkpoint(path)
    assert meta == {"step": 1} and (weights[0] == 1).all()


# --------------------------------------------------------------------------- tiny trainings
def _disks(n, shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(n):
        lbl = np.zeros(shape, np.int32)
        for i in range(1, 6):
            cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
            lbl[((yy - cy) ** 2 + (xx - cx) ** 2 < 25) & (lbl == 0)] = i
        out.append(((lbl > 0) + rng.normal(0, 0.1, shape)).astype(np.float32))
        out.append(lbl)
    return out[0::2], out[1::2]


def test_tiny_unet_training_saves_its_settings(tmp_path):
    pytest.importorskip("torch")
    from napari_cnnvision.backends.unet.train import train_unet
    from napari_cnnvision.core.registry import read_card

    images, masks = _disks(3)
    s = UNetTrainSettings(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, depth=2, base_filters=4,
                          learning_rate=2e-3, seed_grid=(0.5,), augment=AugmentSettings(zoom=0.2))
    res = train_unet(images[:2], masks[:2], images[2:], masks[2:], tmp_path, "tiny", s)
    assert UNetTrainSettings.from_training_json(res.model_dir) == s
    assert UNetTrainSettings.from_dict(read_card(res.model_dir, "path").training["settings"]) == s
    # fine-tuning: the initial model's network decides which patch sizes fit (depth 2: multiples of 4)
    s2 = UNetTrainSettings(epochs=1, steps_per_epoch=1, batch_size=1, patch_size=34, depth=1, seed_grid=(0.5,))
    with pytest.raises(InputError, match="multiple of 4"):
        train_unet(images[:2], masks[:2], images[2:], masks[2:], tmp_path, "tuned", s2, init_folder=res.model_dir)
    assert not (tmp_path / "tuned").exists()


def test_tiny_stardist_training_saves_its_settings_and_keeps_them_when_the_last_write_fails(tmp_path):
    """stardist trains in a subprocess (TensorFlow stays out of the pytest process). training.json
    holds the settings from the start; the final write (with the history) fails half-way, as on a
    full disk: the earlier file stays whole and no temp file is left."""
    code = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np
        from test_train_settings import _HalfFile, _disks
        import napari_cnnvision.backends.stardist.train as ST

        real_save, real_fdopen, calls = ST.save_training_json, os.fdopen, []

        def save(folder, settings, **extra):
            calls.append(sorted(extra))
            if "history" not in extra:
                return real_save(folder, settings, **extra)
            os.fdopen = lambda fd, *a, **k: _HalfFile(real_fdopen(fd, *a, **k))
            try:
                return real_save(folder, settings, **extra)
            finally:
                os.fdopen = real_fdopen

        ST.save_training_json = save
        images, masks = _disks(3, (96, 96))
        s = ST.StarDistTrainSettings(n_rays=8, patch_size=(64, 64), batch_size=2, epochs=1, steps_per_epoch=2,
                                     unet_n_depth=2, unet_n_filter_base=8, augment={{"zoom": 0.1}})
        try:
            ST.train_stardist2d(images[:2], masks[:2], images[2:], masks[2:], {str(tmp_path)!r}, "tiny", s,
                                optimize_thresholds=False)
            err = None
        except OSError as e:
            err = str(e)
        print(json.dumps({{"error": err, "calls": calls, "settings": s.to_dict()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    assert "No space left" in res["error"]
    assert res["calls"] == [["init_weights"], ["history", "init_weights", "seconds"]]
    folder = tmp_path / "tiny"
    assert (folder / "weights_best.h5").is_file()  # it did train
    assert not [p for p in os.listdir(folder) if p.startswith(".") or p.endswith(".tmp")]
    record = json.loads((folder / "training.json").read_text())
    assert set(record) == {"settings", "init_weights"}  # the file written at the start, whole
    s = StarDistTrainSettings.from_training_json(folder)
    assert s.to_dict() == StarDistTrainSettings.from_dict(res["settings"]).to_dict() and s.augment.zoom == 0.1


# --------------------------------------------------------------------------- detector and localizer
def _det():
    from napari_cnnvision.backends.detection.train import DetectorTrainSettings

    return DetectorTrainSettings


def _loc():
    from napari_cnnvision.backends.localizer.settings import LocalizerTrainSettings

    return LocalizerTrainSettings


@pytest.mark.parametrize("which, kw, match", [
    ("det", {"learning_rate": 0}, "learning_rate must be a number > 0"),
    ("det", {"epochs": 0}, "epochs must be a whole number >= 1"),
    ("det", {"val_every": 1.5}, "val_every"),
    ("det", {"warmup_steps": -1}, "warmup_steps"),
    ("det", {"time_budget": -60}, "time_budget"),
    ("det", {"min_lr_fraction": 2}, "min_lr_fraction must be a number in 0..1"),
    ("det", {"augment": {"gain": (1.2, 0.8)}}, "augment.gain"),
    ("det", {"resume": "yes"}, "resume must be true or false"),
    ("det", {"checkpoint": 3}, "checkpoint"),
    ("loc", {"learning_rate": -1e-3}, "learning_rate must be a number > 0"),
    ("loc", {"batch_size": 0}, "batch_size"),
    ("loc", {"time_budget": 0}, "time_budget"),
    ("loc", {"ema": 1.0}, "ema must be a number in 0..1"),
    ("loc", {"input_size": (0, 64)}, "input_size"),
    ("loc", {"widths": ()}, "widths"),
    ("loc", {"augment": {"zoom": 1.5}}, "augment.zoom"),
    ("loc", {"augment": {"on": "yes"}}, "augment.on must be true or false"),
    ("loc", {"augment": {"zom": 0.1}}, "augment"),
])
def test_detector_and_localizer_bad_values_are_clear_input_errors(which, kw, match):
    cls = _det() if which == "det" else _loc()
    with pytest.raises(InputError, match=match) as e:
        cls.from_dict(kw)
    assert str(e.value).startswith(cls.label)
    with pytest.raises(InputError, match=match):
        cls(**kw)


def test_detector_and_localizer_json_round_trip():
    from napari_cnnvision.backends.localizer.settings import LocalizerAugment

    D, L = _det(), _loc()
    for s in (D(epochs=7, batch_size=2, learning_rate=5e-4, time_budget=90.0, val_every=3, seed=4,
                augment=AugmentSettings(flips=False, gain=(0.8, 1.2), offset=0.0, zoom=0.1), checkpoint="run.ckpt"),
              L(epochs=9, learning_rate=1e-3, time_budget=30.0, input_size=(128, 96), widths=(8, 16), box_weight=5.0,
                augment=LocalizerAugment(turns=False, zoom=0.0, intensity=0.3))):
        cls = type(s)
        assert s != cls()
        d = s.to_dict()
        assert not {"patch_size", "pmin", "pmax", "lr"} & set(d)  # not used by these trainers: not saved
        assert "learning_rate" in d and "time_budget" in d and isinstance(d["augment"], dict)
        back = cls.from_json(s.to_json())
        assert back == s and type(back.augment) is type(s.augment)


def test_detector_and_localizer_nested_augment_keeps_the_trainers_defaults():
    D, L = _det(), _loc()
    a = D.from_dict({"augment": {"zoom": 0.3}}).augment
    assert (a.zoom, a.gain, a.offset) == (0.3, (0.9, 1.1), 0.05)  # the detector's jitter, not the shared default
    la = L.from_dict({"augment": {"turns": False}}).augment
    assert (la.turns, la.on, la.zoom, la.shift) == (False, True, 0.2, 0.15)


def test_detector_and_localizer_former_names_read():
    from napari_cnnvision.backends.detection.train import DetTrainSettings

    D, L = _det(), _loc()
    # the shipped cards were written with lr, time_budget_min / time_budget_s and flat augment fields (untouched)
    yolo = D.from_model_card(shipped_models_dir() / "bloodcells-yolo")
    assert (yolo.learning_rate, yolo.epochs, yolo.time_budget, yolo.val_every) == (2e-3, 300, 3600, 2)
    assert yolo.augment == AugmentSettings(flips=True, gain=(0.9, 1.1), offset=0.05, zoom=0.0)
    frcnn = D.from_model_card(shipped_models_dir() / "bloodcells-frcnn")
    assert (frcnn.learning_rate, frcnn.batch_size) == (1e-3, 4)
    loc = L.from_model_card(shipped_models_dir() / "wbc-localizer")
    assert (loc.learning_rate, loc.time_budget, loc.box_weight, loc.augment.turns, loc.augment.on) == (
        1e-3, 3000.0, 50.0, False, True)
    # the former constructor and the worker's former keys (the Train widget sends lr, time_budget_min / _s)
    s = DetTrainSettings(lr=0.02, flips=False, gain=(1.0, 1.0), offset=0.0, time_budget_min=2)
    assert (s.learning_rate, s.augment.flips, s.augment.gain, s.augment.offset, s.time_budget) == (
        0.02, False, (1.0, 1.0), 0.0, 120)
    ls = L.from_dict({"lr": 5e-3, "time_budget_s": 60, "augment": False, "zoom": 0.05})
    assert (ls.learning_rate, ls.time_budget, ls.augment.on, ls.augment.zoom) == (5e-3, 60, False, 0.05)
    with pytest.raises(InputError, match="detector training settings: learning_rate"):
        DetTrainSettings(lr=-1)


def test_the_detector_train_job_refuses_a_bad_setting_before_building(tmp_path):
    from napari_cnnvision.backends.training.jobs import detector_train_job

    with pytest.raises(InputError, match="detector training settings: batch_size"):
        detector_train_job(train=[{}], val=[{}], classes=["a"], name="x", settings={"batch_size": 0},
                           out_dir=tmp_path)
    assert not list(tmp_path.iterdir())
