"""Segment widget defects (issue 10), each shown in a real napari window with the shipped U-Net."""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from napari_cnnvision.core.results import SegmentationResult
from napari_cnnvision.layers.common import RESULT_KEY

UNET = "nuclei-unet"


@pytest.fixture
def unet(make_napari_viewer):
    """A viewer with a 128x128 crop of the 2D sample and the Segment widget on the shipped U-Net."""
    from napari_cnnvision.sample_data import load_sample
    from napari_cnnvision.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(load_sample("nuclei_2d")[:128, :128], name="cells")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = UNET
    w.image.value = viewer.layers["cells"]
    return viewer, w


def _run(w, qtbot, timeout=120000):
    w.run()
    assert w.runner.running, w.status.value
    _settle(w, qtbot, timeout)


def _settle(w, qtbot, timeout=120000):
    """Wait until no job runs and no re-run is pending."""
    qtbot.waitUntil(lambda: not w.runner.running and not w._debounce.isActive(), timeout=timeout)


def _ours(viewer, kind):
    return [lyr for lyr in viewer.layers if lyr.metadata.get(RESULT_KEY, {}).get("kind") == kind]


def _movie(viewer):
    img = viewer.layers["cells"].data
    layer = viewer.add_image(np.stack([img, img[::-1], img[:, ::-1]]), name="movie")
    layer.axis_labels = ("t", "y", "x")
    return layer


# -- outlines ---------------------------------------------------------------------------
def test_outlines_follow_reruns_and_frames(unet, qtbot):
    viewer, w = unet
    w.outlines.value = True
    _run(w, qtbot)
    (out,) = _ours(viewer, "segmentation-outlines")
    w.outlines.value = False
    _run(w, qtbot)
    assert not _ours(viewer, "segmentation-outlines")  # outlines off: the old ones go
    w.outlines.value = True
    _run(w, qtbot)
    assert len(_ours(viewer, "segmentation-outlines")) == 1
    img = viewer.layers["cells"].data
    viewer.layers["cells"].data = np.zeros((128, 128), np.uint16)  # nothing to find
    _run(w, qtbot)
    assert "0 objects" in w.status.value
    assert not _ours(viewer, "segmentation-outlines")  # zero objects: no stale outlines
    viewer.layers["cells"].data = img

    # current frame: outlines belong to that frame, and the other frames' stay
    w.image.value = _movie(viewer)
    w.scope.value = "current frame"
    for t in (0, 2):
        viewer.dims.current_step = (t, 0, 0)
        _run(w, qtbot)
    (res,) = [lyr for lyr in _ours(viewer, "segmentation") if lyr.name == "movie [nuclei-unet]"]
    (out,) = [lyr for lyr in _ours(viewer, "segmentation-outlines") if "movie" in lyr.name]
    assert out.ndim == 3
    drawn = _outlined_frames(out)
    assert drawn == {0, 2} == set(res.features["frame"])


def _outlined_frames(layer):
    if layer._type_string == "labels":
        return {t for t in range(layer.data.shape[0]) if np.asarray(layer.data[t]).any()}
    return {int(d[0, 0]) for d in layer.data}


def _discs(n_side=18, r=4, size=256):
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    polys = []
    step = size // n_side
    k = 0
    for i in range(n_side):
        for j in range(n_side - 1):
            cy, cx = step // 2 + i * step, step // 2 + j * step
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
            a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            polys.append(np.column_stack([cy + r * np.sin(a), cx + r * np.cos(a)]))
    return labels, polys


def test_adding_outlines_of_300_objects_is_quick_on_the_gui_thread(unet, qtbot):
    """The result arrives on the GUI thread: turning it into layers must not stall napari."""
    viewer, w = unet
    labels, polys = _discs()
    n = int(labels.max())
    assert n >= 290
    layer = viewer.add_image(np.zeros(labels.shape, np.float32), name="many")
    table = {"label": np.arange(1, n + 1), "area": np.full(n, 49.0), "centroid_y": np.zeros(n),
             "centroid_x": np.zeros(n), "probability": np.ones(n)}
    res = SegmentationResult(labels, table, UNET, 0.5, None, polys)
    w.image.value = layer
    viewer.add_labels(labels, name="warm-up")  # napari compiles its label colouring once per process

    def add(outlines):
        w.outlines.value = outlines
        t0 = time.perf_counter()
        w._on_done(res, w._job_context())
        qtbot.wait(1)  # the first draw of the new layers happens on the GUI thread too
        return time.perf_counter() - t0

    plain = add(False)
    with_outlines = add(True)
    assert len(_ours(viewer, "segmentation-outlines")) == 1
    again = add(True)  # a re-run updates both layers in place
    t0 = time.perf_counter()
    viewer.add_labels(np.zeros_like(labels), name="any layer")
    qtbot.wait(1)
    any_layer = time.perf_counter() - t0
    print(f"GUI-thread time to show a {n}-object result: {1000 * plain:.0f} ms; with outlines added: "
          f"{1000 * with_outlines:.0f} ms; re-run with outlines: {1000 * again:.0f} ms "
          f"(napari adding an empty Labels layer: {1000 * any_layer:.0f} ms)")
    # Shapes polygons took 1.9-3.2 s here (their triangulation grows with the objects); the outlines
    # are now a Labels layer drawn with `contour` on the same array: what they add is napari's fixed
    # cost of adding any layer. Generous bounds: the machine may be loaded.
    assert with_outlines - plain < max(0.4, 1.5 * any_layer)
    assert again < 0.5


# -- thresholds -------------------------------------------------------------------------
def test_threshold_edit_during_a_job_is_applied_after_it(unet, qtbot):
    viewer, w = unet
    w.optimized.value = False
    w.prob.value = 0.3
    _run(w, qtbot)
    res = viewer.layers["cells [nuclei-unet]"]
    assert res.metadata[RESULT_KEY]["prob_thresh"] == pytest.approx(0.3)
    w.run()
    assert w.runner.running
    w.prob.value = 0.75  # edited while the job runs
    _settle(w, qtbot)
    qtbot.waitUntil(lambda: res.metadata[RESULT_KEY]["prob_thresh"] == pytest.approx(0.75), timeout=60000)
    _settle(w, qtbot)
    assert w.prob.value == pytest.approx(0.75)


def test_ticking_optimized_thresholds_again_reruns(unet, qtbot):
    viewer, w = unet
    seed = w.prob.value
    assert seed == pytest.approx(0.65) and w.prob.value != 0.5  # the card's, not the widget's default
    w.optimized.value = False
    w.prob.value = 0.3
    _run(w, qtbot)
    res = viewer.layers["cells [nuclei-unet]"]
    assert res.metadata[RESULT_KEY]["prob_thresh"] == pytest.approx(0.3)
    w.optimized.value = True  # no click on Segment
    assert w.prob.value == pytest.approx(seed)
    qtbot.waitUntil(lambda: res.metadata[RESULT_KEY]["prob_thresh"] == pytest.approx(seed), timeout=60000)


# -- model choice -----------------------------------------------------------------------
def test_corrupt_model_folder_is_reported_and_blocks_segment(unet, tmp_path, qtbot):
    from napari_cnnvision.core.registry import shipped_models_dir
    from napari_cnnvision.widgets.segment import BROWSE

    viewer, w = unet
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    w.model.value = BROWSE
    assert not w.run_btn.enabled  # no folder chosen yet
    w.model_dir.value = str(broken)
    assert "cannot read the model card" in w.status.value
    assert not w.run_btn.enabled
    w.run()
    assert not w.runner.running

    damaged = tmp_path / "damaged-unet"  # a readable card, but the U-Net config is damaged
    shutil.copytree(shipped_models_dir() / UNET, damaged)
    (damaged / "config.json").write_text("[1, 2")
    w.model_dir.value = str(damaged)
    assert "cannot read" in w.status.value and "config.json" in w.status.value
    assert not w.run_btn.enabled

    w.model.value = UNET
    assert w.run_btn.enabled and "cannot read" not in w.status.value
    _run(w, qtbot)
    assert "objects in" in w.status.value


def test_rgb_image_is_refused_before_any_model_loads(unet, qtbot):
    viewer, w = unet
    viewer.open_sample("napari-cnnvision", "he_2d")
    w.image.value = viewer.layers["he_2d"]
    w.run()
    assert not w.runner.running  # refused at once, from the model's card
    assert "expects a single-channel" in w.status.value and "RGB" in w.status.value
    assert not w.runner.pool.workers  # no worker was started, no model loaded
    assert w.run_btn.enabled


# -- normalization ----------------------------------------------------------------------
def test_normalization_defaults_to_the_models_card(unet, qtbot):
    from napari_cnnvision.core.registry import shipped_models_dir

    viewer, w = unet
    dst = os.path.join(os.environ["NAPARI_CNNVISION_DATA_DIR"], "models", "unet-norm")
    shutil.copytree(shipped_models_dir() / UNET, dst)
    card = json.loads(open(os.path.join(dst, "model.json")).read())
    card.update(name="unet-norm", normalization={"type": "percentile", "pmin": 2.5, "pmax": 99.0})
    with open(os.path.join(dst, "model.json"), "w") as f:
        json.dump(card, f)
    w.model.reset_choices()
    w.model.value = "unet-norm"
    assert w.model_norm.value and not w.pmin.enabled
    assert (w.pmin.value, w.pmax.value) == (2.5, 99.0)  # shown from the card
    _, kwargs, _ = w._request()
    assert "pmin" not in kwargs and "pmax" not in kwargs  # the backend uses the card's
    w.model_norm.value = False
    assert w.pmin.enabled
    w.pmin.value = 3.0
    _, kwargs, _ = w._request()
    assert (kwargs["pmin"], kwargs["pmax"]) == (3.0, 99.0)
    w.model_norm.value = True  # back to the card's
    assert (w.pmin.value, w.pmax.value) == (2.5, 99.0)
    _, kwargs, _ = w._request()
    assert "pmin" not in kwargs


# -- axes -------------------------------------------------------------------------------
def test_axes_choice_for_a_3d_stack_and_a_2d_model(unet, qtbot):
    viewer, w = unet
    viewer.open_sample("napari-cnnvision", "nuclei_3d")
    w.image.value = viewer.layers["nuclei_3d"]
    values = [v for _, v in w.axes.choices] if isinstance(w.axes.choices[0], tuple) else list(w.axes.choices)
    assert set(values) == {"TYX", "ZYX"}
    assert w.axes.value == "ZYX" and not w.axes.native.isHidden()  # a z-stack unless labelled as time
    assert "slice by slice" in w.axes_note.value
    assert not w.stitch.native.isHidden() and w.stitch.value
    _, kwargs, _ = w._request()
    assert kwargs["axes"] == "ZYX" and kwargs["stitch_z"] is True
    w.stitch.value = False
    assert w._request()[1]["stitch_z"] is False
    w.axes.value = "TYX"  # the user says it is a time-lapse
    assert w.stitch.native.isHidden()
    _, kwargs, _ = w._request()
    assert kwargs["axes"] == "TYX" and "stitch_z" not in kwargs
    movie = _movie(viewer)  # labelled as time by its axis labels
    w.image.value = movie
    assert w.axes.value == "TYX"
    w.image.value = viewer.layers["cells"]
    assert w._request()[1]["axes"] == "YX"


def test_2d_model_on_a_z_stack_end_to_end(unet, qtbot):
    import inspect

    from napari_cnnvision.backends.unet import predict

    if "stitch_z" not in inspect.signature(predict.segment).parameters:
        pytest.skip("the backend does not stitch Z slices yet")
    viewer, w = unet
    img = viewer.layers["cells"].data
    viewer.add_image(np.stack([img, img, img[::-1]]), name="zstack")
    w.image.value = viewer.layers["zstack"]
    assert w.axes.value == "ZYX" and w.stitch.value
    _run(w, qtbot)
    res = viewer.layers["zstack [nuclei-unet]"]
    assert res.data.shape == (3, 128, 128)
    # the first two slices are identical: stitched, each object of slice 0 continues into slice 1
    np.testing.assert_array_equal(res.data[0], res.data[1])
    assert "objects in" in w.status.value


# -- counts, Cancel and a crashed worker ------------------------------------------------
def test_current_frame_reports_frame_and_stack_counts(unet, qtbot):
    viewer, w = unet
    w.image.value = _movie(viewer)
    assert w.axes.value == "TYX"
    w.scope.value = "current frame"
    viewer.dims.current_step = (0, 0, 0)
    _run(w, qtbot)
    n0 = len(viewer.layers["movie [nuclei-unet]"].features)
    viewer.dims.current_step = (2, 0, 0)
    _run(w, qtbot)
    feats = viewer.layers["movie [nuclei-unet]"].features
    n2 = int((feats["frame"] == 2).sum())
    assert n0 and n2 and len(feats) == n0 + n2
    assert f"{n2} objects in frame 2; {n0 + n2} in the stack" in w.status.value


def _slow_stack(viewer):
    img = viewer.layers["cells"].data
    layer = viewer.add_image(np.stack([np.roll(img, k, axis=1) for k in range(40)]), name="long")
    layer.axis_labels = ("t", "y", "x")
    return layer


def _copy(data):
    return [np.array(d, copy=True) for d in data] if isinstance(data, list) else np.array(data, copy=True)


def _snapshot(viewer):
    return {lyr.name: (type(lyr).__name__, _copy(lyr.data), dict(lyr.metadata)) for lyr in viewer.layers}


def _assert_unchanged(viewer, before):
    assert {lyr.name for lyr in viewer.layers} == set(before)
    for lyr in viewer.layers:
        kind, data, meta = before[lyr.name]
        assert type(lyr).__name__ == kind
        if isinstance(data, list):
            assert len(lyr.data) == len(data) and all(np.array_equal(a, b) for a, b in zip(lyr.data, data))
        else:
            np.testing.assert_array_equal(lyr.data, data)
        assert dict(lyr.metadata) == meta


def test_cancel_and_a_killed_worker_during_segmentation_keep_layers(unet, qtbot):
    """Cancel, then a worker killed (as by the OOM killer), each during a real segmentation while an
    earlier result and its outlines are shown: every layer stays as it was, the widget says what
    happened, the bar is reset, and the next run works."""
    viewer, w = unet
    w.outlines.value = True
    _run(w, qtbot)  # an earlier result (and its outlines) exists
    assert "objects in" in w.status.value and _ours(viewer, "segmentation-outlines")
    long = _slow_stack(viewer)
    for how in ("cancel", "kill"):
        w.image.value = long
        w.tta.value = True  # 8 network passes per frame: long enough to interrupt
        before = _snapshot(viewer)
        w.run()
        qtbot.waitUntil(lambda: w.progress.value > 0, timeout=120000)  # really segmenting
        assert w.cancel_btn.enabled and not w.run_btn.enabled
        if how == "cancel":
            w.cancel_btn.clicked.emit()
        else:
            os.kill(w.runner.pool.workers["torch"].pid, signal.SIGKILL)
        qtbot.waitUntil(lambda: not w.runner.running, timeout=20000)
        assert ("Cancelled" if how == "cancel" else "stopped unexpectedly") in w.status.value, how
        assert w.progress.value == 0, how
        assert w.run_btn.enabled and not w.cancel_btn.enabled
        _assert_unchanged(viewer, before)
        w.tta.value = False  # the next run works
        w.image.value = viewer.layers["cells"]
        _run(w, qtbot)
        assert "objects in" in w.status.value and w.progress.value == 100, how
