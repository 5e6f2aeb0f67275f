"""The Segment widget end to end in napari with a small model in the user's model folder."""
import json
import os
import shutil

import numpy as np
import pytest
from stardist_helpers import make_tiny_stardist

from napari_cnnvision.layers.segmentation import RESULT_KEY
from napari_cnnvision.widgets.segment import BROWSE as BROWSE_VALUE

TINY_THRESHOLDS = {"prob": 0.62, "nms": 0.33}


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
    return make_tiny_stardist(tmp_path_factory.mktemp("models"))


@pytest.fixture
def widget(make_napari_viewer, tiny_src):
    from napari_cnnvision.widgets.segment import SegmentWidget

    user_models = os.path.join(os.environ["NAPARI_CNNVISION_DATA_DIR"], "models")
    shutil.copytree(tiny_src, os.path.join(user_models, "tiny-stardist"))
    with open(os.path.join(user_models, "tiny-stardist", "thresholds.json"), "w") as f:
        json.dump(TINY_THRESHOLDS, f)  # not the widget's defaults (0.5, 0.4)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cnnvision", "nuclei_2d")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = "tiny-stardist"
    w.image.value = viewer.layers["nuclei_2d"]
    return viewer, w


def _run(w, qtbot):
    w.run()
    assert w.runner.running
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120000)


def test_segment_adds_labels_with_features_and_replaces_only_its_own(widget, qtbot):
    viewer, w = widget
    assert (w.prob.value, w.nms.value) == (0.62, 0.33)  # read from the model's thresholds.json
    user_layer = viewer.add_labels(np.zeros(viewer.layers["nuclei_2d"].data.shape, np.uint8),
                                   name="nuclei_2d [tiny-stardist]")  # the user's own, same name
    user_layer.data[0:5, 0:5] = 1
    w.optimized.value = False
    w.prob.value = 0.3
    _run(w, qtbot)
    ours = [lyr for lyr in viewer.layers if RESULT_KEY in lyr.metadata]
    assert len(ours) == 1, w.status.value
    res = ours[0]
    assert res.name != user_layer.name and res.data.shape == viewer.layers["nuclei_2d"].data.shape
    assert list(res.features.columns[:2]) == ["index", "label"]
    assert set(res.features["label"]) == set(np.unique(res.data)) - {0}
    assert "objects" in w.status.value and w.progress.value == 100
    n_layers = len(viewer.layers)
    w.prob.value = 0.6
    _run(w, qtbot)
    assert len(viewer.layers) == n_layers  # replaced in place
    assert res.metadata[RESULT_KEY]["prob_thresh"] == 0.6
    assert user_layer.data[0:5, 0:5].all() and user_layer.data.sum() == 25  # untouched


def test_segment_bad_input_reports_and_stays_usable(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    w.image.value = viewer.layers["rgb"]
    w.run()  # refused from the model's card, before any job
    assert not w.runner.running
    assert "expects a single-channel" in w.status.value
    assert w.run_btn.enabled and not w.cancel_btn.enabled
    w.image.value = viewer.layers["nuclei_2d"]
    _run(w, qtbot)
    assert "objects in" in w.status.value


def test_test_time_augmentation_option(widget, qtbot, tmp_path):
    from stardist_helpers import make_tiny_stardist3d

    viewer, w = widget
    assert w.tta.enabled and not w.tta.value
    w.tta.value = True
    _run(w, qtbot)
    res = viewer.layers["nuclei_2d [tiny-stardist]"]
    assert res.metadata[RESULT_KEY]["tta"] is True and "objects in" in w.status.value
    # flips/turns of 3D rays are not exact: the option is off for 3D models
    make_tiny_stardist3d(tmp_path / "m")
    w.model.value = BROWSE_VALUE
    w.model_dir.value = str(tmp_path / "m" / "tiny-stardist3d")
    w._on_model()
    assert not w.tta.enabled and not w.tta.value


def test_segment_current_frame_of_stack(widget, qtbot):
    viewer, w = widget
    img = viewer.layers["nuclei_2d"].data[:128, :128]
    viewer.add_image(np.stack([img] * 4), name="movie")
    viewer.dims.current_step = (2, 0, 0)
    w.image.value = viewer.layers["movie"]
    w.axes.value = "TYX"  # a time-lapse, not a z-stack (the guess without axis labels)
    w.scope.value = "current frame"
    w.optimized.value = False
    w.prob.value = 0.2
    _run(w, qtbot)
    res = viewer.layers["movie [tiny-stardist]"]
    assert res.data.shape == (4, 128, 128)
    assert not res.data[[0, 1, 3]].any()


def test_threshold_edit_reruns_only_postprocessing(widget, qtbot):
    viewer, w = widget
    w.optimized.value = False
    w.prob.value = 0.3
    _run(w, qtbot)
    res = viewer.layers["nuclei_2d [tiny-stardist]"]
    w.prob.value = 0.7  # no click: the widget re-runs by itself
    qtbot.waitUntil(lambda: res.metadata[RESULT_KEY]["prob_thresh"] == 0.7, timeout=60000)
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert "objects in" in w.status.value


def test_unet_model_in_the_widget(make_napari_viewer, qtbot):
    from napari_cnnvision.backends.unet.io import save_model
    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet
    from napari_cnnvision.widgets.segment import SegmentWidget

    cfg = UNetConfig(depth=2, base_filters=4)
    save_model(os.path.join(os.environ["NAPARI_CNNVISION_DATA_DIR"], "models", "tiny-unet"), build_unet(cfg), cfg,
               name="tiny-unet", thresholds={"seed": 0.6, "fg": 0.5, "min_size": 8})
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cnnvision", "nuclei_2d")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert not w.nms.native.isHidden()  # a StarDist model is selected first
    w.model.value = "tiny-unet"
    w.image.value = viewer.layers["nuclei_2d"]
    assert w.nms.native.isHidden() and w.prob.label == "seed probability" and w.prob.value == 0.6
    _run(w, qtbot)
    res = viewer.layers["nuclei_2d [tiny-unet]"]
    assert res.data.shape == viewer.layers["nuclei_2d"].data.shape
    assert "torch" in w.runner.pool.workers and "objects in" in w.status.value


def test_non_image_layer_cannot_be_segmented(make_napari_viewer):
    from napari_cnnvision.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="only labels")
    viewer.add_points([[1, 1]], name="pts")
    w = SegmentWidget(viewer)
    assert w.image.choices == ()  # only Image layers are offered
    w.run()
    assert not w.runner.running
    assert "select an Image layer" in w.status.value


def test_current_frame_runs_accumulate_with_unique_labels(widget, qtbot):
    viewer, w = widget
    img = viewer.layers["nuclei_2d"].data[:128, :128]
    viewer.add_image(np.stack([img, img[::-1], img[:, ::-1]]), name="movie", axis_labels=("t", "y", "x"))
    w.image.value = viewer.layers["movie"]
    assert w.axes.value == "TYX"
    w.scope.value = "current frame"
    w.optimized.value = False
    w.prob.value = 0.2
    for t in (0, 2):
        viewer.dims.current_step = (t, 0, 0)
        _run(w, qtbot)
    res = viewer.layers["movie [tiny-stardist]"]
    a, c = set(np.unique(res.data[0])) - {0}, set(np.unique(res.data[2])) - {0}
    assert a and c and not (a & c)  # unique across frames
    assert not res.data[1].any()
    feats = res.features
    assert set(feats["frame"]) == {0, 2}
    assert set(feats["label"]) == a | c and feats["index"].is_unique
    viewer.dims.current_step = (0, 0, 0)
    _run(w, qtbot)  # re-running frame 0 replaces its rows
    assert sorted(res.features["frame"].tolist()).count(2) == len(c)
    assert res.features["index"].is_unique


def test_tensorflow_never_loaded_in_naparis_process(widget, qtbot):
    import sys

    viewer, w = widget
    _run(w, qtbot)
    assert "objects in" in w.status.value
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules
    assert w.runner.pool.workers["tf"].pid != os.getpid()
