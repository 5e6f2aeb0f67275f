"""The Detect dock widget in a real napari window, with a tiny YOLO-style detector trained on two
coloured squares (conftest's ``tiny_detector``, once per session); its jobs run in one compute
worker shared by these tests."""
import os
import signal

import numpy as np
import pytest

from napari_cnnvision.layers.common import RESULT_KEY

torch = pytest.importorskip("torch")

CLASSES = ["red", "green"]
MODEL = "sq-yolo"


def squares(seed=0) -> np.ndarray:
    """64x64 RGB uint8: a red square (rows 8-24, cols 10-26) and a green one (rows 38-56, cols 36-54)."""
    rng = np.random.default_rng(seed)
    im = rng.uniform(0, 0.1, (64, 64, 3)).astype(np.float32)
    im[8:24, 10:26, 0] = 1.0
    im[38:56, 36:54, 1] = 1.0
    return im


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_detector):
    """A folder of user models: the square detector (conftest's ``tiny_detector``, trained once per
    session) and, for the wrong-task checks, a tiny localizer."""
    import shutil

    from napari_cnnvision.backends.localizer import io as lio
    from napari_cnnvision.backends.localizer.model import LocalizerConfig, build_localizer

    root = tmp_path_factory.mktemp("user-models")
    shutil.copytree(tiny_detector / MODEL, root / MODEL)
    lcfg = LocalizerConfig(n_classes=2, input_size=(32, 32), widths=(8, 16))
    lio.save_model(root / "tiny-loc", build_localizer(lcfg), lcfg, ["a", "b"])
    return root


@pytest.fixture(scope="module")
def shared_pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


def make_widget(cls, viewer, models, pool, model=None):
    """``cls`` docked in ``viewer`` with the user models of ``models``; jobs run in ``pool``."""
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.widgets import _compute

    _compute._POOLS[viewer] = pool  # one torch worker for all the tests of the module
    w = cls(viewer, ModelRegistry(user_dir=models))
    viewer.window.add_dock_widget(w)
    if model is not None:
        w.model.value = model
    return w


def run(w, qtbot, timeout=120000):
    w.run()
    assert w.runner.running, w.status.value
    settle(w, qtbot, timeout)


def settle(w, qtbot, timeout=120000):
    """Wait until no job runs and no re-run is pending."""
    debounce = getattr(w, "_debounce", None)
    qtbot.waitUntil(lambda: not w.runner.running and not (debounce is not None and debounce.isActive()),
                    timeout=timeout)


def ours(viewer, kind):
    return [lyr for lyr in viewer.layers if lyr.metadata.get(RESULT_KEY, {}).get("kind") == kind]


def corners(boxes, frame=None):
    """napari rectangles (4 corners, (row, col)) of (y0, x0, y1, x1) boxes."""
    out = []
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        c = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
        if frame is not None:
            c = np.column_stack([np.full(4, frame[k], float), c])
        out.append(c)
    return out


@pytest.fixture
def detect(make_napari_viewer, models, shared_pool):
    from napari_cnnvision.widgets.detect import DetectWidget

    viewer = make_napari_viewer()
    viewer.add_image((squares() * 255).astype(np.uint8), name="squares", rgb=True)
    w = make_widget(DetectWidget, viewer, models, shared_pool, MODEL)
    w.image.value = viewer.layers["squares"]
    return viewer, w


def test_boxes_match_api_detect_and_a_threshold_change_replaces_them(detect, models, qtbot):
    from napari_cnnvision import api
    from napari_cnnvision.core.registry import read_card

    viewer, w = detect
    assert (w.score.value, w.nms.value) == (0.25, 0.5)  # the model's own (its config.json)
    assert w.scope.native.isHidden()  # a single image has no frames to choose
    w.score.value = 0.05
    run(w, qtbot)
    assert w.last_result.timings["network_s"] > 0
    (shapes,) = ours(viewer, "detection")
    (points,) = ours(viewer, "detection-centres")
    assert shapes.name == "squares [sq-yolo]" and points.name == "squares [sq-yolo] centres"
    image = viewer.layers["squares"].data
    card = read_card(models / MODEL, "user")
    ref = api.detect(image, card, score_thresh=0.05, nms_thresh=0.5, isolated=False)
    assert ref.n_objects >= 3 and set(ref.classes) == set(CLASSES)
    assert len(shapes.data) == ref.n_objects and set(shapes.shape_type) == {"rectangle"}
    for got, want in zip(shapes.data, corners(ref.boxes)):
        np.testing.assert_allclose(got, want, atol=1e-3)  # (row, col) corners of (y0, x0, y1, x1)
    assert list(shapes.features["class"]) == ref.classes
    np.testing.assert_allclose(shapes.features["score"], ref.scores, rtol=1e-5)
    assert shapes.text.values[0] == f"{ref.classes[0]} {ref.scores[0]:.2f}"
    colour = {c: tuple(e) for c, e in zip(shapes.features["class"], shapes.edge_color)}
    assert len(set(colour.values())) == 2  # one colour per class
    np.testing.assert_allclose(points.data, ref.centers, atol=1e-3)
    assert list(points.features["class"]) == ref.classes
    counts = ref.counts()
    assert f"{ref.n_objects} objects: red {counts['red']}, green {counts['green']}" in w.status.value
    # the best boxes are the squares themselves
    best = {c: b for b, c in zip(ref.boxes[::-1], ref.classes[::-1])}
    assert np.abs(best["red"] - [8, 10, 24, 26]).max() < 4 and np.abs(best["green"] - [38, 36, 56, 54]).max() < 4

    w.score.value = 0.6  # a threshold change re-runs by itself (on the worker's cached raw boxes)
    qtbot.waitUntil(lambda: w.runner.running or w._debounce.isActive(), timeout=5000)
    settle(w, qtbot)
    assert "network_s" not in w.last_result.timings  # only the score filter and NMS ran again
    high = api.detect(image, card, score_thresh=0.6, nms_thresh=0.5, isolated=False)
    assert ours(viewer, "detection") == [shapes] and ours(viewer, "detection-centres") == [points]  # replaced
    assert len(shapes.data) == high.n_objects < ref.n_objects
    assert set(shapes.shape_type) == {"rectangle"} and len(shapes.edge_color) == high.n_objects
    for got, want in zip(shapes.data, corners(high.boxes)):
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert shapes.metadata[RESULT_KEY]["score_thresh"] == 0.6
    assert {c: tuple(e) for c, e in zip(shapes.features["class"], shapes.edge_color)}.items() <= colour.items()
    assert len(points.data) == high.n_objects and f"{high.n_objects} objects" in w.status.value
    assert w.progress.value == 100 and w.run_btn.enabled and not w.cancel_btn.enabled


def test_current_frame_of_a_stack_keeps_the_other_frames(detect, qtbot):
    viewer, w = detect
    im = (squares() * 255).astype(np.uint8)
    stack = viewer.add_image(np.stack([im, im[::-1, ::-1], np.zeros_like(im)]), name="movie", rgb=True)
    w.image.value = stack
    assert not w.scope.native.isHidden()
    w.scope.value = "current frame"
    viewer.dims.current_step = (1, 0, 0)
    run(w, qtbot)
    (shapes,) = [lyr for lyr in ours(viewer, "detection") if lyr.name == "movie [sq-yolo]"]
    assert shapes.ndim == 3 and len(shapes.data)
    assert all((np.asarray(v)[:, 0] == 1).all() for v in shapes.data)  # frame index first: frame 1 only
    assert set(shapes.features["frame"]) == {1}
    frame1 = [np.array(v) for v in shapes.data]
    n1 = len(frame1)
    assert f"frame 1: {n1} objects" in w.status.value and f"{n1} in the stack" in w.status.value

    viewer.dims.current_step = (0, 0, 0)
    run(w, qtbot)
    assert [lyr.name for lyr in ours(viewer, "detection")].count("movie [sq-yolo]") == 1
    feats = shapes.features
    assert set(feats["frame"]) == {0, 1} and (feats["frame"] == 1).sum() == n1  # frame 1 kept
    kept = [np.array(v) for v, f in zip(shapes.data, feats["frame"]) if f == 1]
    for a, b in zip(kept, frame1):
        np.testing.assert_allclose(a, b)
    (points,) = [lyr for lyr in ours(viewer, "detection-centres") if lyr.name == "movie [sq-yolo] centres"]
    assert points.ndim == 3 and len(points.data) == len(shapes.data)
    np.testing.assert_array_equal(points.data[:, 0], feats["frame"])

    n = len(shapes.data)
    w.score.value = 0.9  # re-runs the frames shown (0 and 1), not the empty frame 2
    qtbot.waitUntil(lambda: w.runner.running or w._debounce.isActive(), timeout=5000)
    settle(w, qtbot)
    assert set(shapes.features["frame"]) <= {0, 1} and len(shapes.data) <= n
    assert shapes.metadata[RESULT_KEY]["frames"] == [0, 1]


def _snapshot(viewer):
    return {lyr.name: [np.array(d, copy=True) for d in lyr.data] if lyr._type_string == "shapes"
            else np.array(lyr.data, copy=True) for lyr in viewer.layers}


def _assert_unchanged(viewer, before):
    assert [lyr.name for lyr in viewer.layers] == list(before)
    for lyr in viewer.layers:
        if lyr._type_string == "shapes":
            assert len(lyr.data) == len(before[lyr.name])
            for a, b in zip(lyr.data, before[lyr.name]):
                np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(lyr.data, before[lyr.name])


def test_cancel_and_a_killed_worker_keep_layers_and_the_next_run_works(detect, qtbot):
    viewer, w = detect
    run(w, qtbot)  # an earlier result exists
    assert ours(viewer, "detection")
    im = (squares() * 255).astype(np.uint8)
    long = viewer.add_image(np.tile(im, (12, 8, 8, 1)), name="long", rgb=True)  # 12 frames of 512x512: tiled
    for how in ("cancel", "kill"):
        w.image.value = long
        before = _snapshot(viewer)
        w.run()
        qtbot.waitUntil(lambda: w.progress.value > 0, timeout=60000)  # really detecting
        assert w.cancel_btn.enabled and not w.run_btn.enabled
        if how == "cancel":
            w.cancel_btn.clicked.emit()
        else:
            os.kill(w.runner.pool.workers["torch"].pid, signal.SIGKILL)
        qtbot.waitUntil(lambda: not w.runner.running, timeout=30000)
        assert ("Cancelled" if how == "cancel" else "stopped unexpectedly") in w.status.value, how
        assert w.progress.value == 0 and w.run_btn.enabled and not w.cancel_btn.enabled, how
        _assert_unchanged(viewer, before)
        w.image.value = viewer.layers["squares"]  # the next run works
        run(w, qtbot)
        assert "objects" in w.status.value and w.progress.value == 100, how


def test_wrong_task_models_and_bad_layers_are_refused_before_a_job(detect, models, qtbot):
    from napari_cnnvision.widgets.localize import LocalizeWidget

    viewer, w = detect
    names = list(w.model.choices)
    assert MODEL in names and "tiny-loc" not in names and "nuclei-stardist" not in names
    loc = make_widget(LocalizeWidget, viewer, models, w.runner.pool)
    assert "tiny-loc" in list(loc.model.choices)
    assert MODEL not in list(loc.model.choices)
    w.model.value = "(model folder below)"
    w.model_dir.value = models / "tiny-loc"  # browsing to a model of another task
    assert not w.run_btn.enabled and "is a localize model, not a detect model" in w.status.value
    w.model.value = MODEL
    assert w.run_btn.enabled
    # a grayscale image is fine for the RGB model (the backend replicates it): the widget says so
    gray = viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    w.image.value = gray
    assert not w.note.native.isHidden() and "replicated" in w.note.value
    # a 4-D layer is refused with a message, nothing is added, the widget stays usable
    w.image.value = viewer.add_image(np.zeros((2, 2, 32, 32), np.uint8), name="tzyx")
    n_layers = len(viewer.layers)
    w.run()
    assert not w.runner.running and "2-D image or a stack" in w.status.value
    assert len(viewer.layers) == n_layers and w.run_btn.enabled and w.progress.value == 0
    w.image.value = gray  # no objects: empty layers, not an error
    run(w, qtbot)
    (empty,) = [lyr for lyr in ours(viewer, "detection") if lyr.name == "gray [sq-yolo]"]
    assert len(empty.data) == 0 and w.status.value.startswith("0 objects")


def _fake(n, frame=None, classes=CLASSES, model=MODEL):
    """A DetectionResult of ``n`` 4x4 boxes on a grid (class by parity)."""
    from napari_cnnvision.core.results import DetectionResult

    k = np.arange(n)
    y, x = (k // 100) * 5.0, (k % 100) * 5.0
    boxes = np.column_stack([y, x, y + 4, x + 4])
    return DetectionResult(boxes, k % 2, np.full(n, 0.9), list(classes), model, (512, 512),
                           None if frame is None else np.zeros(n, np.int64), frame is not None, 0.25, 0.5)


def test_over_5000_boxes_only_centres_are_shown_and_why(detect):
    from napari_cnnvision.widgets._boxes_widget import MAX_SHAPES, BoxJob

    viewer, w = detect
    layer = viewer.layers["squares"]
    w._on_done(_fake(10), BoxJob(layer, w._card, "frames"))
    (shapes,) = ours(viewer, "detection")
    assert len(shapes.data) == 10
    w._on_done(_fake(MAX_SHAPES + 1), BoxJob(layer, w._card, "frames"))
    assert not ours(viewer, "detection")  # the Shapes layer would be too slow
    (points,) = ours(viewer, "detection-centres")
    assert len(points.data) == MAX_SHAPES + 1 and "only their centres are shown" in w.status.value
    assert f"{MAX_SHAPES + 1} objects: red {(MAX_SHAPES + 2) // 2}, green {(MAX_SHAPES + 1) // 2}" in w.status.value
    w._on_done(_fake(12), BoxJob(layer, w._card, "frames"))
    (shapes,) = ours(viewer, "detection")
    assert len(shapes.data) == 12 and ours(viewer, "detection-centres") == [points] and len(points.data) == 12


def test_a_box_the_user_deleted_stays_deleted_when_another_frame_runs(detect):
    from napari_cnnvision.widgets._boxes_widget import BoxJob

    viewer, w = detect
    stack = viewer.add_image(np.zeros((3, 512, 512), np.uint8), name="movie")
    w._on_done(_fake(6, frame=True), BoxJob(stack, w._card, "frames", [0]))
    (shapes,) = ours(viewer, "detection")
    assert shapes.ndim == 3 and list(shapes.features["frame"]) == [0] * 6
    shapes.selected_data = {2}
    shapes.remove_selected()  # the user deletes a wrong box
    w._on_done(_fake(4, frame=True), BoxJob(stack, w._card, "frames", [2]))
    f = shapes.features
    assert list(f["frame"]) == [0] * 5 + [2] * 4 and len(shapes.data) == 9
    kept = np.array([np.asarray(v)[0, 1:] for v in list(shapes.data)[:5]])
    np.testing.assert_allclose(kept[:, 1], [0, 5, 15, 20, 25])  # box 2 (x 10) is gone, the others stay
    assert all(np.asarray(v)[0, 0] == 2 for v in list(shapes.data)[5:])
    assert list(f["class"][:5]) == ["red", "green", "green", "red", "green"]
    assert "frame 2: 4 objects" in w.status.value and "9 in the stack" in w.status.value


def test_the_widget_starts_on_the_default_model(make_napari_viewer, models, tmp_path):
    """The shipped model whose card says "default": true, not the first one listed."""
    import json
    import shutil

    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.widgets.detect import DetectWidget

    shipped = tmp_path / "shipped"
    for name, default in (("a-first", False), ("b-marked", True)):
        shutil.copytree(models / MODEL, shipped / name)
        card = json.loads((shipped / name / "model.json").read_text())
        card["name"] = name
        card.setdefault("extra", {})["default"] = default
        (shipped / name / "model.json").write_text(json.dumps(card))
    registry = ModelRegistry(user_dir=tmp_path / "user", shipped_dir=shipped)
    assert list(DetectWidget(make_napari_viewer(), registry).model.choices)[:2] == ["a-first", "b-marked"]
    assert DetectWidget(make_napari_viewer(), registry).model.value == "b-marked"
