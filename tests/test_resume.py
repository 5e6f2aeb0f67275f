"""Resumable training of the PyTorch trainers (backends/checkpoint.py): a run interrupted by an error
or a killed worker leaves its checkpoint in ``<user_dir>/.training/<name>``, ``resume=True`` continues
it to the planned epochs with a continuous history, a finished or stopped run removes it; a missing
run, other settings/data/classes, a full disk during a save and an untrusted pickle (tiny networks)."""
from __future__ import annotations

import errno
import os
import pickle
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cnnvision.backends.checkpoint import (CHECKPOINT_NAME, interrupted_runs, load_checkpoint,  # noqa: E402
                                                  run_dir, run_info)
from napari_cnnvision.core.axes import InputError  # noqa: E402
from napari_cnnvision.core.progress import Cancelled, Progress  # noqa: E402
from napari_cnnvision.core.registry import ModelRegistry  # noqa: E402

TINY_UNET = {"depth": 2, "base_filters": 4, "steps_per_epoch": 3, "batch_size": 2, "patch_size": 32,
             "seed_grid": [0.5]}
TINY_YOLO = {"widths": [8, 16, 32], "depths": [0, 1, 1], "stride": 4, "head_channels": 16, "input_size": 96}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One PyTorch thread here and in the workers (tiny networks; far faster on a busy machine)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Interrupt(Exception):
    """Stands for a crash in the middle of a training."""


def crash_at(epoch: int, events: list | None = None) -> Progress:
    """A progress sink that raises when the event of ``epoch`` arrives (its checkpoint is written)."""
    def emit(ev):
        if events is not None:
            events.append(ev)
        if ev.metrics.get("epoch") == epoch:
            raise Interrupt(f"crash after epoch {epoch}")
    return Progress(emit)


def epochs_of(events) -> list[int]:
    return [e.metrics["epoch"] for e in events if "epoch" in e.metrics]


# --- U-Net --------------------------------------------------------------------------------------
def disks(seed: int, size: int = 48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for i in range(4):
        cy, cx = rng.integers(8, size - 8, 2)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = i + 1
    return ((lab > 0) * 0.8 + rng.normal(0, 0.1, lab.shape)).astype(np.float32), lab


def unet_kwargs(epochs=3, seed=0, **settings):
    data = [disks(seed + i) for i in range(3)]
    return {"images": [d[0] for d in data[:2]], "masks": [d[1] for d in data[:2]], "val_images": [data[2][0]],
            "val_masks": [data[2][1]], "settings": {**TINY_UNET, "epochs": epochs, **settings}}


def test_unet_run_interrupted_by_a_crash_resumes_to_the_planned_epochs(tmp_path):
    from napari_cnnvision.backends.unet.io import load_model
    from napari_cnnvision.backends.unet.train import train_job

    whole = train_job(Progress(), out_dir=tmp_path, name="whole", **unet_kwargs())  # the same run, not interrupted
    assert not run_dir(tmp_path, "whole").exists()  # a normal end removes the run's checkpoint

    events = []
    with pytest.raises(Interrupt):
        train_job(crash_at(2, events), out_dir=tmp_path, name="part", **unet_kwargs())
    assert interrupted_runs(tmp_path) == ["part"] and run_info(tmp_path, "part")["epoch"] == 2
    assert not (tmp_path / "part").exists()  # nothing registered
    assert "part" not in [c.name for c in ModelRegistry(user_dir=tmp_path, shipped_dir=os.devnull).list()]
    before = [e.metrics["loss"] for e in events if "epoch" in e.metrics]

    events = []
    kw = unet_kwargs()
    kw.pop("settings")  # a resumption without settings takes the interrupted run's
    res = train_job(Progress(events.append), out_dir=tmp_path, name="part", resume=True, **kw)
    assert epochs_of(events) == [3]  # only the epoch that was left
    assert res.epochs_run == 3 and len(res.history["loss"]) == 3
    assert res.history["loss"][:2] == before  # the loss curve continues the interrupted one
    for k in ("loss", "val_loss", "lr"):  # ... exactly as if the run had never stopped
        np.testing.assert_allclose(res.history[k], whole.history[k], rtol=1e-4)
    assert interrupted_runs(tmp_path) == [] and not run_dir(tmp_path, "part").exists()
    loaded = load_model(res.model_dir, use_cache=False)  # the registered model loads
    assert loaded.config.base_filters == 4
    card = ModelRegistry(user_dir=tmp_path, shipped_dir=os.devnull).get("part")
    assert card.training["epochs"] == 3 and card.training["resumed_after_epoch"] == 2


def test_resuming_without_an_interrupted_run_is_a_clear_error(tmp_path):
    from napari_cnnvision.backends.localizer.job import train_job as localizer_job
    from napari_cnnvision.backends.training.jobs import detector_train_job
    from napari_cnnvision.backends.unet.train import train_job

    with pytest.raises(InputError, match="no interrupted training run named 'nothing'.*there are none"):
        train_job(Progress(), out_dir=tmp_path, name="nothing", resume=True, **unet_kwargs())
    ims, boxes, labels = synth_localization(4)
    with pytest.raises(InputError, match="no interrupted training run named 'nothing'"):
        localizer_job(Progress(), ims, boxes, labels, ["a", "b"], out_dir=tmp_path, name="nothing", resume=True,
                      settings=LOC_SETTINGS)
    train, val, classes = detection_samples()
    with pytest.raises(InputError, match="no interrupted training run named 'nothing'"):
        detector_train_job(train=train, val=val, classes=classes, name="nothing", config=TINY_YOLO,
                           settings={"epochs": 2, "batch_size": 2}, out_dir=tmp_path, resume=True)
    assert not any(tmp_path.iterdir()) or interrupted_runs(tmp_path) == []
    assert not (tmp_path / "nothing").exists()


def test_resuming_with_other_settings_or_data_is_refused_and_keeps_the_run(tmp_path):
    from napari_cnnvision.backends.unet.train import train_job

    with pytest.raises(Interrupt):
        train_job(crash_at(1), out_dir=tmp_path, name="run", **unet_kwargs(epochs=2))
    ckpt = run_dir(tmp_path, "run") / CHECKPOINT_NAME
    saved = ckpt.read_bytes()
    with pytest.raises(InputError, match="another architecture.*base_filters"):
        train_job(Progress(), out_dir=tmp_path, name="run", resume=True, **unet_kwargs(epochs=2, base_filters=8))
    with pytest.raises(InputError, match="other settings.*learning_rate: 0.001 then, 0.01 now"):
        train_job(Progress(), out_dir=tmp_path, name="run", resume=True, **unet_kwargs(epochs=2, learning_rate=0.01))
    with pytest.raises(InputError, match="other training data"):
        train_job(Progress(), out_dir=tmp_path, name="run", resume=True, **unet_kwargs(epochs=2, seed=5))
    rgb = unet_kwargs(epochs=2)
    rgb["images"] = [np.stack([x] * 3, -1) for x in rgb["images"]]
    rgb["val_images"] = [np.stack([x] * 3, -1) for x in rgb["val_images"]]
    with pytest.raises(InputError, match="another architecture|other number of channels"):
        train_job(Progress(), out_dir=tmp_path, name="run", resume=True, **rgb)
    assert ckpt.read_bytes() == saved and interrupted_runs(tmp_path) == ["run"]  # nothing lost
    # more epochs than planned first is a resumption too
    res = train_job(Progress(), out_dir=tmp_path, name="run", resume=True, **unet_kwargs(epochs=3))
    assert res.epochs_run == 3 and interrupted_runs(tmp_path) == []


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The saves after epoch 1 fail half-way (ENOSPC): the training goes on and says so; the file
    holds epoch 1, complete and readable, no temp file is left, and the run resumes from it."""
    from napari_cnnvision.backends.unet.train import train_job

    real_save = torch.save
    failures = []

    def full_disk_save(obj, f, *a, **kw):
        if ".training" in str(f) and isinstance(obj, dict) and obj.get("epoch", 0) >= 2:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")  # part of it reached the disk
            failures.append(obj["epoch"])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk_save)
    events = []
    with pytest.raises(Interrupt):
        train_job(crash_at(3, events), out_dir=tmp_path, name="full", **unet_kwargs(epochs=4))
    assert failures == [2, 3] and epochs_of(events) == [1, 2, 3]  # it went on after the failed saves
    msgs = [e.message for e in events if "checkpoint_error" in e.metrics]
    assert len(msgs) == 2 and "epoch 2 (the disk is full)" in msgs[0] and "epoch 1 is kept" in msgs[0]
    folder = run_dir(tmp_path, "full")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "run.json"]  # no temp file
    state = load_checkpoint(folder / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1
    assert run_info(tmp_path, "full")["epoch"] == 1

    monkeypatch.setattr(torch, "save", real_save)
    events = []
    res = train_job(Progress(events.append), out_dir=tmp_path, name="full", resume=True, **unet_kwargs(epochs=4))
    assert epochs_of(events) == [2, 3, 4] and res.epochs_run == 4


def test_a_full_disk_at_the_final_save_leaves_the_run_which_resumes_to_the_save(tmp_path, monkeypatch):
    from napari_cnnvision.backends.unet import io as unet_io
    from napari_cnnvision.backends.unet.train import train_job

    real = unet_io.save_model

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unet_io, "save_model", no_space)
    with pytest.raises(OSError, match="No space left"):
        train_job(Progress(), out_dir=tmp_path, name="late", **unet_kwargs(epochs=2))
    assert interrupted_runs(tmp_path) == ["late"] and run_info(tmp_path, "late")["epoch"] == 2
    monkeypatch.setattr(unet_io, "save_model", real)  # space freed
    events = []
    res = train_job(Progress(events.append), out_dir=tmp_path, name="late", resume=True, **unet_kwargs(epochs=2))
    assert epochs_of(events) == [] and res.epochs_run == 2 and len(res.history["loss"]) == 2  # no epoch again
    assert (tmp_path / "late" / "weights.pt").is_file() and interrupted_runs(tmp_path) == []


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_an_untrusted_pickle_as_checkpoint_is_refused(tmp_path, how):
    from napari_cnnvision.backends.unet.train import train_job

    marker = tmp_path / "the-payload-ran"
    folder = run_dir(tmp_path, "evil")
    folder.mkdir(parents=True)
    payload = {"format": "napari-cnnvision training checkpoint", "model": _RunsCode(str(marker)), "epoch": 1}
    if how == "torch":
        torch.save(payload, folder / CHECKPOINT_NAME)
    else:
        (folder / CHECKPOINT_NAME).write_bytes(pickle.dumps(payload))
    assert interrupted_runs(tmp_path) == ["evil"]
    with pytest.raises(InputError, match="checkpoint of the interrupted run 'evil'.*not a weights-only"):
        train_job(Progress(), out_dir=tmp_path, name="evil", resume=True, **unet_kwargs(epochs=2))
    assert not marker.exists()
    with pytest.raises(InputError, match="not a weights-only"):
        load_checkpoint(folder / CHECKPOINT_NAME)
    assert not marker.exists()


def test_interrupted_runs_lists_left_checkpoints_but_not_a_run_training_now(tmp_path):
    import json
    import socket
    import subprocess

    assert interrupted_runs(tmp_path) == [] and interrupted_runs(tmp_path / "missing") == []
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid, active in (("killed", int(gone.stdout), True), ("errored", os.getpid(), False),
                              ("training-now", os.getpid(), True), ("no-checkpoint", None, False)):
        folder = run_dir(tmp_path, name)
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "active": active}))
        if pid is not None:
            (folder / CHECKPOINT_NAME).write_bytes(b"")
    assert interrupted_runs(tmp_path) == ["errored", "killed"]
    assert [c.name for c in ModelRegistry(user_dir=tmp_path, shipped_dir=os.devnull).list() if c.source == "user"] == []



def test_discarding_a_run_removes_its_checkpoint_and_staging_folders_but_refuses_one_training_now(tmp_path):
    import json
    import socket

    from napari_cnnvision.backends.runs import discard_run

    for name, active in (("left", False), ("training-now", True)):
        folder = run_dir(tmp_path, name)
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                     "active": active}))
        (folder / CHECKPOINT_NAME).write_bytes(b"x")
    stage = tmp_path / ".left.ab12cd34.tmp"  # the unfinished model save of the killed run
    (stage / "sub").mkdir(parents=True)
    (stage / "sub" / "weights.h5").write_bytes(b"w")
    others = [tmp_path / ".left-two.ab12cd34.tmp", tmp_path / "left", tmp_path / ".left.short.tmp"]
    for p in others:  # another model's staging folder, a model named like the run, not a staging name
        p.mkdir()
    discard_run(tmp_path, "left")
    assert not run_dir(tmp_path, "left").exists() and not stage.exists()
    assert all(p.is_dir() for p in others)
    with pytest.raises(InputError, match="training now"):
        discard_run(tmp_path, "training-now")
    assert (run_dir(tmp_path, "training-now") / CHECKPOINT_NAME).is_file()
    assert interrupted_runs(tmp_path) == []
    discard_run(tmp_path, "never-was")  # nothing to do

# --- through the compute worker: a killed worker --------------------------------------------------
def test_a_killed_training_worker_leaves_its_checkpoint_and_the_run_resumes(pool):
    """Cancel kills the worker process mid-training (the localizer job: no StarDist import in the
    worker); the run is left, and resumes to the planned epochs."""
    from napari_cnnvision.backends.localizer.io import load_model
    from napari_cnnvision.backends.localizer.job import train_job as localizer_job

    user_dir = ModelRegistry().user_dir
    ims, boxes, labels = synth_localization(10)
    kw = {"images": ims[:6], "boxes": boxes[:6], "labels": labels[:6], "class_names": ["dim", "bright"],
          "val_images": ims[6:], "val_boxes": boxes[6:], "val_labels": labels[6:], "name": "killed"}
    planned = 12
    events = []
    with pytest.raises(Cancelled):
        pool.run("localizer.train", {**kw, "settings": {**LOC_SETTINGS, "epochs": planned}}, on_event=events.append,
                 should_kill=lambda: any("epoch" in e.metrics for e in events))
    assert not pool.workers["torch-train"].alive
    assert interrupted_runs(user_dir) == ["killed"]
    done = run_info(user_dir, "killed")["epoch"]
    assert 1 <= done < planned
    events = []  # resumed here (a second worker start would only add its start-up time)
    res = localizer_job(Progress(events.append), **kw, resume=True)
    assert epochs_of(events) == list(range(done + 1, planned + 1)) and res["epochs_run"] == planned
    assert interrupted_runs(user_dir) == []
    card = ModelRegistry().get("killed")
    assert card.path == res["model_dir"] and card.training["resumed_after_epoch"] == done
    assert load_model(card.path, use_cache=False).class_names == ["dim", "bright"]


# --- detector --------------------------------------------------------------------------------------
def detection_samples():
    from napari_cnnvision.backends.training.detection import detection_set

    rng = np.random.default_rng(1)
    img = rng.integers(0, 40, (96, 96), dtype=np.uint8)
    boxes, classes = [], []
    for i, (y, x) in enumerate([(8, 8), (8, 60), (60, 8), (60, 60), (40, 30)]):
        s = 14 if i % 2 else 22
        img[y:y + s, x:x + s] = 200
        boxes.append([y, x, y + s, x + s])
        classes.append("small" if i % 2 else "big")
    ds = detection_set(img, boxes, classes, val_fraction=0.3)
    return ds.train, ds.val, ds.classes


def test_detector_run_resumes_with_a_continuous_history_and_refuses_other_classes(tmp_path):
    from napari_cnnvision.backends.detection.models import load_detector
    from napari_cnnvision.backends.training.jobs import detector_train_job

    train, val, classes = detection_samples()
    kw = {"train": train, "val": val, "config": TINY_YOLO, "out_dir": tmp_path, "name": "det"}
    events = []
    with pytest.raises(Interrupt):
        detector_train_job(crash_at(2, events), classes=classes, settings={"epochs": 3, "batch_size": 2}, **kw)
    assert interrupted_runs(tmp_path) == ["det"]
    before = [e.metrics["train_loss"] for e in events if "epoch" in e.metrics]
    with pytest.raises(InputError, match="another class set"):
        detector_train_job(classes=["big", "tiny"], resume=True, **kw)
    events = []
    res = detector_train_job(Progress(events.append), classes=classes, resume=True, **kw)
    assert epochs_of(events) == [3] and res.epochs_run == 3
    assert res.history["train_loss"][:2] == before and len(res.history["val_map"]) == 3
    assert np.all(np.diff(res.history["seconds"]) > 0)  # the clock continues too
    model, cfg = load_detector(res.model_dir)
    assert cfg["classes"] == classes and interrupted_runs(tmp_path) == []

    # Stop: the best model so far is registered and the run removed
    stop = Progress(None, lambda: True)
    res = detector_train_job(stop, classes=classes, settings={"epochs": 5, "batch_size": 2},
                             **{**kw, "name": "det-stopped"})
    assert res.stopped and res.epochs_run == 1 and (tmp_path / "det-stopped").is_dir()
    assert not run_dir(tmp_path, "det-stopped").exists()


# --- localizer --------------------------------------------------------------------------------------
LOC_SETTINGS = {"epochs": 3, "batch_size": 4, "input_size": [32, 32], "widths": [4, 8, 8]}


def synth_localization(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    ims, boxes, labels = [], [], []
    for i in range(n):
        im = rng.normal(0.1, 0.05, (size, size)).astype(np.float32)
        y, x = rng.integers(2, size - 14, 2)
        im[y:y + 12, x:x + 12] = 0.9 if i % 2 else 0.5
        ims.append(im)
        boxes.append([y, x, y + 12, x + 12])
        labels.append(i % 2)
    return ims, np.array(boxes), np.array(labels)


def test_localizer_run_resumes_to_the_planned_epochs(tmp_path):
    from napari_cnnvision.backends.localizer.io import load_model
    from napari_cnnvision.backends.localizer.job import train_job

    ims, boxes, labels = synth_localization(10)
    kw = {"images": ims[:6], "boxes": boxes[:6], "labels": labels[:6], "class_names": ["dim", "bright"],
          "val_images": ims[6:], "val_boxes": boxes[6:], "val_labels": labels[6:], "out_dir": tmp_path}
    whole_events = []
    whole = train_job(Progress(whole_events.append), name="whole", settings=LOC_SETTINGS, **kw)
    events = []
    with pytest.raises(Interrupt):
        train_job(crash_at(2, events), name="loc", settings=LOC_SETTINGS, **kw)
    assert interrupted_runs(tmp_path) == ["loc"] and run_info(tmp_path, "loc")["kind"] == "localizer"
    with pytest.raises(InputError, match="another class set"):
        train_job(Progress(), name="loc", resume=True, **{**kw, "class_names": ["a", "b"]})
    events = []
    res = train_job(Progress(events.append), name="loc", resume=True, **kw)
    assert epochs_of(events) == [3] and res["epochs_run"] == 3
    # epoch 3 continues from the saved weights, optimizer, EMA and random state: as in the whole run
    last = next(e.metrics for e in events if e.metrics.get("epoch") == 3)
    ref = next(e.metrics for e in whole_events if e.metrics.get("epoch") == 3)
    assert last["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
    assert last["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-4)
    assert interrupted_runs(tmp_path) == [] and not run_dir(tmp_path, "loc").exists()
    loaded = load_model(res["model_dir"], use_cache=False)
    assert loaded.class_names == ["dim", "bright"] and loaded.config.widths == (4, 8, 8)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
