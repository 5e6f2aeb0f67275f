"""Resumable StarDist training (``stardist.train``, backends/stardist/resume.py and
keras_checkpoint.py): a run that crashes leaves ``<user_dir>/.training/<name>/checkpoint.h5``
(Keras weights + the state as JSON, written atomically: a full disk keeps the previous one), is
listed as interrupted, and ``resume=True`` continues it at the next epoch with a continuous history,
the optimizer's state and ends with a registered model; other data or settings are refused, a
damaged or foreign checkpoint is a clear error.

TensorFlow never loads into the pytest process (torch tests run there too): the trainings run in
one subprocess (a tiny network, 3 epochs of 2 steps: about 20 s of CPU) that reports what it saw as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCENARIO = r"""
import errno, json, shutil, sys
from pathlib import Path
import numpy as np

import csbdeep.models.base_model as base_model
from napari_cnnvision.backends.runs import interrupted_runs, run_dir, run_info
from napari_cnnvision.backends.keras_checkpoint import load_keras_arrays, load_keras_state
from napari_cnnvision.backends.stardist.train import train_job
from napari_cnnvision.core.axes import InputError
from napari_cnnvision.core.progress import Progress
from napari_cnnvision.core.registry import ModelRegistry

out = Path(sys.argv[1])
report = {}
TINY = {"n_rays": 8, "unet_n_depth": 1, "unet_n_filter_base": 4, "patch_size": 32, "batch_size": 2,
        "epochs": 3, "steps_per_epoch": 2, "reduce_lr_patience": 1}


def disks(seed, size=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for i in range(4):
        cy, cx = rng.integers(8, size - 8, 2)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 <= 25) & (lab == 0)] = i + 1
    return ((lab > 0) * 0.8 + rng.normal(0, 0.1, lab.shape)).astype(np.float32), lab


data = [disks(i) for i in range(3)]
KW = {"images": [d[0] for d in data[:2]], "masks": [d[1] for d in data[:2]], "val_images": [data[2][0]],
      "val_masks": [data[2][1]], "out_dir": str(out), "optimize_thresholds": False}


def error_of(**kw):
    try:
        train_job(Progress(), **{**KW, **kw})
    except InputError as exc:
        return str(exc)
    return None


class Crash(Exception):
    pass


# 1. the save after epoch 2 finds the disk full (half a file written), then the run crashes
real_write = base_model.save_weights_to_hdf5_group
saves = []

def full_disk(f, model):
    if ".training" in f.filename:
        saves.append(f.filename)
        if len(saves) == 2:
            f.create_dataset("half", data=np.zeros(100))
            raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(f, model)

base_model.save_weights_to_hdf5_group = full_disk
events = []

def crash_at_2(ev):
    events.append(ev)
    if ev.metrics.get("epoch") == 2:
        raise Crash("crash after epoch 2")

try:
    train_job(Progress(crash_at_2), name="part", settings=TINY, **KW)
except Crash:
    report["crashed"] = True
base_model.save_weights_to_hdf5_group = real_write
folder = run_dir(out, "part")
state = load_keras_state(folder / "checkpoint.h5")
report.update(
    first_epochs=[e.metrics["epoch"] for e in events if "epoch" in e.metrics],
    first_loss=[e.metrics["loss"] for e in events if "epoch" in e.metrics],
    warnings=[e.message for e in events if "checkpoint_error" in e.metrics],
    interrupted=interrupted_runs(out), info_epoch=run_info(out, "part")["epoch"],
    info_active=run_info(out, "part")["active"], files=sorted(p.name for p in folder.iterdir()),
    saved_epoch=state["epoch"], saved_history=state["history"], saved_lr=state["learning_rate"],
    saved_best_loss=state["best_val_loss"], saved_plateau=state["reduce_lr"],
    saved_iterations=int(load_keras_arrays(folder / "checkpoint.h5")[0]),
    registered=[c.name for c in ModelRegistry(user_dir=out).list() if c.source == "user"])
saved_bytes = (folder / "checkpoint.h5").read_bytes()

# 2. resumptions with other data or settings are refused and change nothing
report["other_data"] = error_of(name="part", resume=True, settings=TINY, val_images=[data[2][0] * 0.5])
report["other_settings"] = error_of(name="part", resume=True, settings={**TINY, "learning_rate": 1e-2})
report["other_arch"] = error_of(name="part", resume=True, settings={**TINY, "n_rays": 16})
report["unchanged"] = (folder / "checkpoint.h5").read_bytes() == saved_bytes and interrupted_runs(out) == ["part"]

# 3. the resumption (its settings from the run): epochs 2 and 3, then a registered model
events = []
iterations = []

def watch(ev):
    events.append(ev)
    if ev.metrics.get("epoch") == 3:  # the checkpoint of epoch 3 is written before its event
        iterations.append(int(load_keras_arrays(folder / "checkpoint.h5")[0]))

for stage in (".part.k1ll3d00.tmp", ".part-2.k1ll3d00.tmp"):  # a killed run's staging folder, another model's
    (out / stage).mkdir()
    (out / stage / "config.json").write_text("{}")
res = train_job(Progress(watch), name="part", resume=True, **KW)
card = ModelRegistry(user_dir=out).get("part")
report.update(
    resumed_epochs=[e.metrics["epoch"] for e in events if "epoch" in e.metrics], resumed_iterations=iterations,
    history=res.history, epochs_run=res.epochs_run, model_dir=res.model_dir,
    model_files=sorted(p.name for p in Path(res.model_dir).iterdir()),
    card_training={k: card.training.get(k) for k in ("resumed_after_epoch", "epochs_run", "checkpoint_warnings")},
    run_dir_left=folder.exists(), interrupted_after=interrupted_runs(out),
    dot_folders=sorted(p.name for p in out.iterdir() if p.name.startswith(".")))

# 4. damaged and foreign checkpoints are clear errors, not crashes
for name, content in (("garbage", b"not an HDF5 file at all" * 10), ("truncated", saved_bytes[:len(saved_bytes) // 2])):
    run_dir(out, name).mkdir(parents=True)
    (run_dir(out, name) / "checkpoint.h5").write_bytes(content)
foreign = run_dir(out, "foreign")
foreign.mkdir(parents=True)
shutil.copyfile(Path(res.model_dir) / "weights_best.h5", foreign / "checkpoint.h5")  # plain Keras weights
report["listed_damaged"] = interrupted_runs(out)
for name in ("garbage", "truncated", "foreign"):
    report[f"error_{name}"] = error_of(name=name, resume=True, settings=TINY)
report["error_missing"] = error_of(name="nothing", resume=True, settings=TINY)
json.dump(report, open(out / "report.json", "w"))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("stardist-resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "KERAS_HOME": str(out / "keras-home")}
    proc = subprocess.run([sys.executable, "-c", SCENARIO, str(out)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def test_a_crashed_run_is_left_with_its_last_complete_checkpoint(report):
    assert report["crashed"] and report["first_epochs"] == [1, 2]
    # the save after epoch 2 failed half-way (a full disk): the training went on and said so
    assert len(report["warnings"]) == 1
    assert "epoch 2 (the disk is full)" in report["warnings"][0] and "epoch 1 is kept" in report["warnings"][0]
    # ... and the file still holds epoch 1, complete; no temp file is left
    assert report["saved_epoch"] == 1 and report["info_epoch"] == 1 and report["saved_iterations"] == 2
    assert report["saved_history"]["loss"] == report["first_loss"][:1]
    # the best val loss of weights_best.h5 and ReduceLROnPlateau's counters, to go on from
    assert report["saved_best_loss"] == report["saved_history"]["val_loss"][0]
    assert report["saved_plateau"] == {"best": report["saved_best_loss"], "wait": 0, "cooldown_counter": 0}
    assert not [f for f in report["files"] if f.startswith(".")]
    assert {"checkpoint.h5", "run.json", "weights_best.h5"} <= set(report["files"])
    assert report["interrupted"] == ["part"] and report["info_active"] is False
    assert report["registered"] == []  # nothing registered


def test_a_resumption_with_other_data_or_settings_is_refused(report):
    assert "other training data" in report["other_data"]
    assert "other settings" in report["other_settings"] and "learning_rate: 0.0003 then, 0.01 now" in \
        report["other_settings"]
    assert "another architecture" in report["other_arch"] and "n_rays" in report["other_arch"]
    assert report["unchanged"]  # the checkpoint is kept as it was, still listed


def test_the_resumed_run_continues_at_the_next_epoch_and_is_registered(report):
    assert report["resumed_epochs"] == [2, 3]  # epoch 2 again (its checkpoint was lost), then 3
    assert report["resumed_iterations"] == [6]  # Adam's step count went on from the checkpoint's 2
    h = report["history"]
    assert report["epochs_run"] == 3 and len(h["loss"]) == len(h["val_loss"]) == 3
    assert h["loss"][:1] == report["first_loss"][:1]  # the curve continues the interrupted one
    assert h["learning_rate"][1] == pytest.approx(report["saved_lr"])  # the rate the checkpoint held
    assert h["val_ap50_epochs"] == [1, 2, 3]
    assert {"config.json", "weights_best.h5", "thresholds.json", "model.json"} <= set(report["model_files"])
    assert report["card_training"]["resumed_after_epoch"] == 1 and report["card_training"]["epochs_run"] == 3
    assert not report["run_dir_left"] and report["interrupted_after"] == []  # a finished run discards its run
    assert report["dot_folders"] == [".part-2.k1ll3d00.tmp"]  # the killed run's staging folder is gone too


def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(report):
    assert report["listed_damaged"] == ["foreign", "garbage", "truncated"]
    for name in ("garbage", "truncated"):
        msg = report[f"error_{name}"]
        assert msg and f"checkpoint of the interrupted run '{name}'" in msg and "cannot be read" in msg, msg
    assert "not a training checkpoint of napari-cnnvision" in report["error_foreign"]
    assert "no interrupted training run named 'nothing'" in report["error_missing"]


def test_a_stardist_run_is_listed_by_the_train_widget_and_resumes_there(make_napari_viewer, monkeypatch, qtbot):
    """``checkpoint.h5`` counts as a run's checkpoint (no TensorFlow needed to list it); Resume on a
    StarDist base asks the worker for ``stardist.train`` with ``resume``."""
    from test_training_data import CENTRES, disks

    from napari_cnnvision.backends.runs import interrupted_runs, run_dir
    from napari_cnnvision.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    img, lab = disks(CENTRES)
    viewer.add_image(img, name="cells")
    viewer.add_labels(lab, name="labels")
    w = TrainWidget(viewer)
    assert w.resume_btn.native.isHidden()
    run = run_dir(w.registry.user_dir, "nuclei-cut-short")
    run.mkdir(parents=True)
    (run / "checkpoint.h5").write_bytes(b"x")
    (run / "run.json").write_text(json.dumps({"active": False, "epoch": 2, "kind": "stardist2d"}))
    assert interrupted_runs(w.registry.user_dir) == ["nuclei-cut-short"]
    w.reset_choices()
    assert not w.resume_btn.native.isHidden() and w.resume_run.value == "nuclei-cut-short"
    w.base.value = "nuclei-stardist"
    started = []
    monkeypatch.setattr(w.runner, "start", lambda job, kwargs, **kw: started.append((job, kwargs)))
    w.resume_btn.clicked.emit()
    qtbot.waitUntil(lambda: bool(started) and not w.runner.running, timeout=60000)  # planned in a thread
    assert started[0][0] == "stardist.train"
    assert started[0][1]["resume"] is True and started[0][1]["name"] == "nuclei-cut-short"
