"""The Train widget in a real viewer: Image + Labels -> a U-Net, Image + Shapes boxes -> a YOLO
detector; the live plot gets one point per epoch; the new model is listed in the other widgets."""

import numpy as np
import pytest

from test_training_data import CENTRES, TINY_UNET, TINY_YOLO, disks

from napari_cnnvision.layers.common import RESULT_KEY
from napari_cnnvision.widgets.train import FRESH, TrainWidget


def _wait(w, qtbot, timeout=180000):
    qtbot.waitUntil(lambda: not w.runner.running, timeout=timeout)


def _started(w, qtbot):
    """After the Train press: the request is built in a thread, then the job starts (or an error)."""
    assert not w.run_btn.enabled  # Train is off meanwhile
    qtbot.waitUntil(lambda: w.stop_btn.enabled or not w.runner.running, timeout=60000)


def test_train_from_labels_plots_each_epoch_and_lists_the_model_in_segment(make_napari_viewer, qtbot):
    from napari_cnnvision.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    img, full = disks(CENTRES)
    viewer.add_image(img, name="cells")
    painted = np.where(np.isin(full, [1, 2, 4]), full, 0)
    viewer.add_labels(painted, name="my labels")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    assert w.base.value == FRESH and w.target.value is viewer.layers["my labels"]
    assert w.name.value == "unet-cells"
    w.epochs.value = 3
    w.val_fraction.value = 0.4
    w.advanced = dict(TINY_UNET)
    w.run()
    _started(w, qtbot)
    assert w.runner.running and w.stop_btn.enabled and not w.run_btn.enabled
    assert w.split.value.startswith("split: train: 1 crop(s)") and "automatic 40% split" in w.split.value
    _wait(w, qtbot)
    assert "saved model 'unet-cells' (3 epoch(s)" in w.status.value, w.status.value
    assert w.plot.epochs == [1, 2, 3] and len(w.plot.train) == len(w.plot.val) == len(w.plot.metric) == 3
    assert np.isfinite(w.plot.train).all() and np.isfinite(w.plot.val).all()
    assert w.progress.value == 100 and not w.stop_btn.enabled
    assert "unet-cells" in [c[1] for c in seg.model.choices] or "unet-cells" in seg.model.choices
    assert "unet-cells" in [v for v in w.base.choices]  # and as a base for the next round
    assert w.name.value == "unet-cells-2"  # the next name is a free one
    card = w.registry.get("unet-cells")
    assert "'my labels'" in card.training["data"] and card.training["settings"]["learning_rate"] == 1e-3
    # the same name again is refused before any job, nothing overwritten
    w.name.value = "unet-cells"
    w.run()
    _wait(w, qtbot)
    assert "exists already" in w.status.value and w.run_btn.enabled

    # the correct-and-retrain loop: a result layer (corrected) is offered as a target; the new model
    # is the base; Stop after the first epoch keeps and registers the best model so far
    result = viewer.add_labels(full, name="cells [unet-cells]", metadata={RESULT_KEY: {"kind": "segmentation"}})
    assert ("cells [unet-cells] (result)", result) in w._target_choices() and result in w.target.choices
    w.target.value = result
    w.base.value = "unet-cells"
    w.name.value = "unet-cells-2"
    w.epochs.value = 50
    w.run()
    qtbot.waitUntil(lambda: len(w.plot.epochs) >= 1, timeout=180000)
    w.stop()
    _wait(w, qtbot)
    assert "saved model 'unet-cells-2' (stopped after" in w.status.value, w.status.value
    assert len(w.plot.epochs) < 50
    card = w.registry.get("unet-cells-2")
    assert card.training["stopped_early"] and card.training["init_folder"] == w.registry.get("unet-cells").path
    assert card.training["settings"]["learning_rate"] == 3e-4  # 'auto' when fine-tuning

    # a time budget (the same worker): the widget stops the U-Net when the time is up
    w.budget.value = "minutes"
    assert not w.minutes.native.isHidden() and w.epochs.native.isHidden()
    w.minutes.value = 0.1  # 6 s
    w.base.value = FRESH
    w.name.value = "unet-cells-3"
    messages, on_progress = [], w._on_progress  # (the runner binds the handlers at the press)
    w._on_progress = lambda ev: (messages.append(ev.message or ""), on_progress(ev))
    w.run()
    _wait(w, qtbot)
    assert "saved model 'unet-cells-3' (stopped after" in w.status.value, w.status.value
    per_epoch = [m for m in messages if m.startswith("epoch")]
    assert per_epoch and all("/" not in m for m in per_epoch), per_epoch  # "epoch 2", never "epoch 2/10000"
    card = w.registry.get("unet-cells-3")
    assert card.training["stopped_early"] and 1 <= card.training["epochs"] < 10000


def test_train_detector_from_shapes_with_a_class_feature(make_napari_viewer, qtbot):
    from napari_cnnvision.widgets.detect import DetectWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    img = rng.integers(0, 40, (128, 128), dtype=np.uint8)
    rects, classes = [], []
    for i, (y, x) in enumerate([(8, 8), (8, 60), (60, 8), (60, 60), (96, 96), (96, 30)]):
        s = 14 if i % 2 else 22
        img[y:y + s, x:x + s] = 200
        rects.append(np.array([[y, x], [y, x + s], [y + s, x + s], [y + s, x]], float))
        classes.append("small" if i % 2 else "big")
    viewer.add_image(img, name="blobs")
    viewer.add_shapes(rects, shape_type="rectangle", features={"class": classes}, name="boxes")
    det = DetectWidget(viewer)
    viewer.window.add_dock_widget(det, name="Detect")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.task.value = "detect"
    assert w.target.value is viewer.layers["boxes"] and w.base.value == FRESH
    w.name.value = "blob-boxes"
    w.epochs.value = 2
    w.val_fraction.value = 0.3
    w.advanced = {"config": TINY_YOLO, "batch_size": 2}
    w.run()
    _wait(w, qtbot)
    assert "saved model 'blob-boxes' (2 epoch(s)" in w.status.value, w.status.value
    assert w.plot.epochs == [1, 2]
    card = w.registry.get("blob-boxes")
    assert card.task == "detect" and card.classes == ["big", "small"] and "'boxes'" in card.training["data"]["pair"]
    assert "blob-boxes" in [c[1] if isinstance(c, tuple) else c for c in det.picker.model.choices]


def test_bad_annotations_are_refused_before_any_job(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img, _ = disks(CENTRES)
    viewer.add_image(img, name="cells")
    viewer.add_labels(np.zeros((100, 100), np.int32), name="wrong size")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")  # docked: its layer lists follow the viewer
    w.run()
    _wait(w, qtbot, 60000)
    assert "differ in size" in w.status.value and w.run_btn.enabled and not w.stop_btn.enabled
    w.task.value = "detect"
    viewer.add_shapes([np.array([[10, 10], [30, 40]])], shape_type="ellipse", name="round")
    w.target.value = viewer.layers["round"]
    w.run()
    assert not w.runner.running and "not rectangles" in w.status.value


def test_train_localizer_from_a_stack_with_one_rectangle_per_frame(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 30, (8, 64, 64), dtype=np.uint8)
    rects, classes = [], []
    for t in range(7):  # frame 7 is not annotated
        y, x = rng.integers(4, 40, 2)
        s = 16 if t % 2 else 10
        stack[t, y:y + s, x:x + s] = 220
        rects.append(np.array([[t, y, x], [t, y, x + s], [t, y + s, x + s], [t, y + s, x]], float))
        classes.append("big" if t % 2 else "small")
    viewer.add_image(stack, name="frames")
    viewer.add_shapes(rects, shape_type="rectangle", features={"class": classes}, name="one per frame")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.task.value = "localize"
    assert w.base.choices[0] == FRESH and "wbc-localizer" in w.base.choices  # a localizer base, or fresh
    assert w.target.value is viewer.layers["one per frame"]
    w.base.value = FRESH
    w.epochs.value = 2
    w.advanced = {"input_size": [32, 32], "widths": [8, 16, 16], "batch_size": 4, "ema": 0.0}
    w.run()
    _started(w, qtbot)
    assert w.split.value == ("split: train: 6 frame(s); val: 1 frame(s); classes: small, big; validation: an "
                             "automatic 20% split of the training data")
    _wait(w, qtbot)
    assert "saved model 'localizer-frames' (2 epoch(s)" in w.status.value, w.status.value
    assert w.plot.epochs == [1, 2] and np.isfinite(w.plot.metric).all()
    card = w.registry.get("localizer-frames")
    assert card.task == "localize" and card.classes == ["small", "big"] and "'one per frame'" in card.training["data"]
    # the next round starts from the model just trained (listed as a base at once)
    assert "localizer-frames" in w.base.choices
    w.base.value = "localizer-frames"
    w.name.value = "localizer-round-2"
    w.run()
    _started(w, qtbot)
    _wait(w, qtbot)
    assert "saved model 'localizer-round-2'" in w.status.value, w.status.value
    card = w.registry.get("localizer-round-2")
    assert card.training["base_model"] == "localizer-frames" and card.training["settings"]["widths"] == [8, 16, 16]


def test_every_annotation_layer_with_its_image_a_stardist_base_and_the_choices_reach_the_plan(make_napari_viewer):
    from napari_cnnvision.backends.augment import AugmentSettings
    from napari_cnnvision.widgets.train import ALL_PAIRS

    viewer = make_napari_viewer()
    img, full = disks(CENTRES)
    img2, full2 = disks([(20, 20), (50, 60), (70, 20)], shape=(96, 112))
    viewer.add_image(img, name="cells")
    viewer.add_image(img2, name="second")
    viewer.add_labels(np.where(np.isin(full, [1, 2]), full, 0), name="cells labels")  # by name
    viewer.add_labels(full2, name="second [nuclei-unet]", metadata={RESULT_KEY: {"source": "second"}})  # a result
    viewer.add_labels(np.zeros((50, 50), np.int32), name="scratch")  # empty: left out
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    assert "nuclei-stardist" in w.base.choices and "nuclei-unet" in w.base.choices
    assert not w.upsampling.native.isHidden()  # a fresh U-Net: its upsampling is offered
    w.upsampling.value = "nearest"
    w.intensity.value = False
    w.scale.value = True
    w.pairs.value = ALL_PAIRS
    assert w.image.native.isHidden() and w.target.native.isHidden()
    p = w.training_plan("two-pairs")
    assert p.job == "unet.train" and "'cells labels'" in p.kwargs["data"] and "'second [nuclei-unet]'" in p.kwargs["data"]
    assert len(p.kwargs["images"]) + len(p.kwargs["val_images"]) >= 2 and w._unpaired == ["scratch (empty)"]
    s = p.kwargs["settings"]
    aug = AugmentSettings(**s["augment"])
    assert s["upsampling"] == "nearest" and tuple(aug.gain) == (1.0, 1.0) and aug.zoom > 0
    w.base.value = "nuclei-stardist"  # StarDist fine-tuning: its own trainer, the same request
    assert w.upsampling.native.isHidden()
    p = w.training_plan("he")
    assert p.job == "stardist.train" and p.kwargs["init_folder"]["path"] == w.registry.get("nuclei-stardist").path
    assert "upsampling" not in p.kwargs["settings"] and p.kwargs["settings"]["learning_rate"] == 3e-4


LEFT = __import__("qtpy.QtCore", fromlist=["Qt"]).Qt.MouseButton.LeftButton


def _toy_running(w, qtbot, result):
    w.runner.start("toy.train", {"epochs": 100000, "seconds": 100000.0}, on_done=result.append)
    w.stop_btn.enabled = True
    qtbot.waitUntil(lambda: w.runner._worker is not None, timeout=10000)
    qtbot.wait(1500)  # the job has started in its worker


def test_closing_while_training_asks_first_then_stops_cleanly(make_napari_viewer, qtbot, monkeypatch):
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication, QMessageBox

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Train")
    qtbot.wait(50)
    button = dock.titleBarWidget().close_button
    answers = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: answers.pop(0))
    result = []
    _toy_running(w, qtbot, result)
    # napari's window (a real close event sent to it): "No" keeps it open and the training going
    answers.append(QMessageBox.StandardButton.No)
    ev = QCloseEvent()
    window = viewer.window._qt_window
    assert w.native.window() is window
    QApplication.sendEvent(window, ev)
    assert not ev.isAccepted()
    assert w.close_guard.asked == 1 and w.runner.running
    # the dock's close button: "No" keeps the dock, "Yes" stops after the epoch (the model is kept) and closes
    answers.append(QMessageBox.StandardButton.No)
    qtbot.mouseClick(button, LEFT)
    assert w.close_guard.asked == 2 and w.runner.running and w.native.parent() is not None
    answers.append(QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(button, LEFT)
    assert w.close_guard.asked == 3 and not w.runner.running
    assert result and result[0]["stopped"] and 1 <= result[0]["epochs"] < 100000  # a cooperative stop, not a kill
    qtbot.waitUntil(lambda: "Train" not in viewer.window.dock_widgets, timeout=5000)
    # nothing running: closing asks nothing
    assert w.close_guard.eventFilter(viewer.window._qt_window, QCloseEvent()) is False and w.close_guard.asked == 3


def _docked_train_widget(make_napari_viewer):
    """A viewer with an image and its full annotation, and the Train widget docked in it."""
    viewer = make_napari_viewer()
    img, full = disks(CENTRES)
    viewer.add_image(img, name="cells")
    viewer.add_labels(full, name="labels")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    return viewer, w


def _leave_interrupted_run(w, name: str, checkpoint_bytes: int = 1):
    """The checkpoint folder a killed run ``name`` leaves; the widget re-reads its runs."""
    import json

    run = w.registry.user_dir / ".training" / name
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"x" * checkpoint_bytes)
    (run / "run.json").write_text(json.dumps({"active": False, "epoch": 3}))
    w.reset_choices()
    return run


def test_an_interrupted_run_offers_resume_with_the_same_name(make_napari_viewer, monkeypatch, qtbot):
    _, w = _docked_train_widget(make_napari_viewer)
    assert w.resume_btn.native.isHidden()
    _leave_interrupted_run(w, "cut-short")
    assert not w.resume_btn.native.isHidden() and w.resume_run.value == "cut-short"
    started = []
    monkeypatch.setattr(w.runner, "start", lambda job, kwargs, **kw: started.append((job, kwargs)))
    w.resume_btn.clicked.emit()
    qtbot.waitUntil(lambda: bool(started) and not w.runner.running, timeout=60000)
    assert started[0][1]["resume"] is True and started[0][1]["name"] == "cut-short"
    w.run_btn.clicked.emit()  # a plain Train never resumes
    qtbot.waitUntil(lambda: len(started) == 2, timeout=60000)
    assert "resume" not in started[-1][1]


def test_an_interrupted_run_can_be_discarded_after_a_question(make_napari_viewer, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    viewer, w = _docked_train_widget(make_napari_viewer)
    assert w.resumes.discard.native.isHidden()
    run = _leave_interrupted_run(w, "cut-short", checkpoint_bytes=2_000_000)
    assert not w.resumes.discard.native.isHidden() and w.resumes.discard.enabled
    asked, answers = [], [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    monkeypatch.setattr(QMessageBox, "question", lambda parent, title, text, *a: asked.append(text) or answers.pop(0))
    w.resumes.discard.clicked.emit()  # No: kept
    assert "cut-short" in asked[0] and "2.0 MB" in asked[0] and "not touched" in asked[0]
    assert run.is_dir() and "kept" in w.status.value and w.resume_run.value == "cut-short"
    w.resumes.discard.clicked.emit()  # Yes: gone, and the list with it
    assert not run.exists() and "discarded the interrupted run 'cut-short'" in w.status.value
    assert w.resumes.discard.native.isHidden() and w.resume_btn.native.isHidden()
    assert len(viewer.layers) == 2

def test_every_rectangle_layer_with_its_image_for_detection(make_napari_viewer):
    from napari_cnnvision.widgets.train import ALL_PAIRS

    viewer = make_napari_viewer()
    for k in range(2):
        rng = np.random.default_rng(k)
        img = rng.integers(0, 40, (64, 80 + 16 * k), dtype=np.uint8)
        rects = [np.array([[y, x], [y, x + 12], [y + 12, x + 12], [y + 12, x]], float)
                 for y, x in [(5, 5), (5, 40), (40, 5), (40, 40)]]
        viewer.add_image(img, name=f"smear{k}")
        viewer.add_shapes(rects, shape_type="rectangle", features={"class": ["a", "b", "a", "b"]},
                          name=f"smear{k} boxes")
    viewer.add_shapes([np.array([[0, 0], [0, 30], [30, 30], [30, 0]], float)], shape_type="rectangle",
                      name="smear0 done")  # a "fully annotated" layer: no class feature, not a pair
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.task.value = "detect"
    w.pairs.value = ALL_PAIRS
    p = w.training_plan("two-smears")
    assert p.job == "yolo.train" and p.kwargs["classes"] == ["a", "b"]
    assert sum(len(s["boxes"]) for s in p.kwargs["train"] + p.kwargs["val"]) == 8
    assert "'smear1 boxes'" in p.kwargs["data"]["source"] and w._unpaired == ["smear0 done (no 'class' feature)"]


def test_validation_on_layers_of_its_own_and_the_request_built_off_the_gui_thread(make_napari_viewer, qtbot,
                                                                                monkeypatch):
    import threading
    import time

    from napari_cnnvision.backends.training import plan as plan_mod
    from napari_cnnvision.widgets._train_validation import LAYERS
    from napari_cnnvision.widgets.train import ALL_PAIRS

    viewer = make_napari_viewer()
    img, full = disks(CENTRES)
    img2, full2 = disks([(20, 20), (50, 60), (70, 20)], shape=(96, 112))
    viewer.add_image(img, name="cells")
    viewer.add_image(img2, name="second")
    viewer.add_labels(full, name="cells labels")
    viewer.add_labels(full2, name="second labels")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    assert not w.val_fraction.native.isHidden() and w.validation.image.native.isHidden()
    w.validation.mode.value = LAYERS
    assert w.val_fraction.native.isHidden() and not w.validation.target.native.isHidden()
    w.validation.image.value = viewer.layers["second"]
    w.validation.target.value = viewer.layers["cells labels"]
    with pytest.raises(Exception, match="is a training annotation too"):
        w.training_plan("x")
    w.validation.target.value = viewer.layers["second labels"]
    p = w.training_plan("x")
    def box(lab):  # the annotation's bounding box: its valid region
        ys, xs = np.nonzero(lab)
        return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1

    assert [m.shape for m in p.kwargs["masks"]] == [box(full)]  # unsplit: the whole training region trains
    assert [m.shape for m in p.kwargs["val_masks"]] == [box(full2)]
    assert p.summary.endswith("validation: 1 pair of its own (image 'second' (96, 112) + labels 'second labels')")
    w.pairs.value = ALL_PAIRS  # every pair but the validation one trains
    p = w.training_plan("x")
    assert "'cells labels'" in p.kwargs["data"].split("; val")[0] and len(p.kwargs["images"]) == 1

    # the Train press: the request is built in a thread; Cancel meanwhile drops it, no job starts
    threads, started = [], []
    real = plan_mod.plan

    def slow_plan(*a, **k):
        threads.append(threading.current_thread())
        time.sleep(1.0)
        return real(*a, **k)

    monkeypatch.setattr(plan_mod, "plan", slow_plan)
    monkeypatch.setattr(w.runner, "start", lambda job, kwargs, **kw: started.append(kwargs))
    w.run()
    assert not w.run_btn.enabled and w.cancel_btn.enabled and not w.split.value
    w.cancel()
    _wait(w, qtbot, 60000)
    assert not started and w.status.value == "Cancelled." and w.run_btn.enabled
    w.run()
    qtbot.waitUntil(lambda: bool(started), timeout=60000)
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert "validation: 1 pair of its own" in w.split.value and w.stop_btn.enabled
    assert len(started[0]["val_images"]) == 1


WARM = r"""
import sys, time
import napari
from napari_cnnvision.widgets._train_start import PRESS_MODULES
from napari_cnnvision.widgets.train import TrainWidget

viewer = napari.Viewer(show=False)
w = TrainWidget(viewer)
wanted = PRESS_MODULES + ("napari_cnnvision.backends.unet.train", "napari_cnnvision.backends.stardist.train")
deadline = time.monotonic() + 60
while not all(m in sys.modules for m in wanted) and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)  # the thread's last imports
print(len(wanted), sum(m in sys.modules for m in wanted), "torch" in sys.modules, "tensorflow" in sys.modules,
      flush=True)
import os
os._exit(0)  # what is measured is printed; Qt's teardown at exit is not this test's subject
"""


def test_the_widget_imports_what_the_train_press_needs_in_the_background_and_no_framework():
    """The first Train press imports nothing on the GUI thread, nor competes with it for the
    interpreter by importing in its own thread: the widget has them imported in a daemon thread."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WARM], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    n, after, torch_, tf = out.stdout.split()[-4:]
    assert int(n) == int(after)  # all of them (the trainers' settings too), soon after the widget was built
    assert torch_ == "False" and tf == "False"
