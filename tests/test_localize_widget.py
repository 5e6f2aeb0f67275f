"""The Localize dock widget in a real napari window, with a tiny (untrained) localizer: one box per
drawn region, inside it; one per frame; the current frame merged into the stack's result."""
import re

import numpy as np
import pytest

from napari_cnnvision.layers.common import RESULT_KEY

pytest.importorskip("torch")

from test_detect_widget import make_widget, ours, run, shared_pool  # noqa: E402,F401  (shared_pool: a fixture)

MODEL = "tiny-loc"


def cells(seed=0, shape=(96, 128)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = rng.normal(40, 5, shape)
    im[10:40, 12:50] += 150
    im[50:90, 70:120] += 120
    return np.clip(im, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A user-model folder with a tiny, untrained localizer (classes a, b)."""
    from napari_cnnvision.backends.localizer import io as lio
    from napari_cnnvision.backends.localizer.model import LocalizerConfig, build_localizer

    root = tmp_path_factory.mktemp("user-models")
    cfg = LocalizerConfig(n_classes=2, input_size=(32, 32), widths=(8, 16))
    lio.save_model(root / MODEL, build_localizer(cfg), cfg, ["a", "b"])
    return root


@pytest.fixture
def localize(make_napari_viewer, models, shared_pool):  # noqa: F811
    from napari_cnnvision.widgets.localize import LocalizeWidget

    viewer = make_napari_viewer()
    viewer.add_image(cells(), name="cells")
    w = make_widget(LocalizeWidget, viewer, models, shared_pool, MODEL)
    w.image.value = viewer.layers["cells"]
    return viewer, w


def _inside(vertices, region, tol=1e-6):
    v = np.asarray(vertices)[:, -2:]
    y0, x0, y1, x1 = region
    return (v[:, 0] >= y0 - tol).all() and (v[:, 0] <= y1 + tol).all() and (v[:, 1] >= x0 - tol).all() and (
        v[:, 1] <= x1 + tol).all()


def test_one_box_per_drawn_region_inside_it(localize, models, qtbot):
    from napari_cnnvision import api
    from napari_cnnvision.core.registry import read_card

    viewer, w = localize
    regions = [(8, 10, 42, 52), (48, 66, 92, 124), (0, 0, 30, 30)]
    drawn = viewer.add_shapes([np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
                               for y0, x0, y1, x1 in regions], shape_type="rectangle", name="my cells")
    assert w.regions.value == "my cells"
    w.mode.value = "each region of a Shapes layer"
    assert not w.regions.native.isHidden()
    run(w, qtbot)
    (shapes,) = ours(viewer, "localization")
    (points,) = ours(viewer, "localization-centres")
    assert shapes.name == "cells [tiny-loc]" and len(shapes.data) == 3 and set(shapes.shape_type) == {"rectangle"}
    for v, r in zip(shapes.data, regions):
        assert _inside(v, r), (v, r)
    f = shapes.features
    assert list(f["region"]) == [0, 1, 2] and set(f["class"]) <= {"a", "b"}
    np.testing.assert_allclose(f["p_a"] + f["p_b"], 1.0, atol=1e-5)
    np.testing.assert_allclose(f["score"], np.maximum(f["p_a"], f["p_b"]), atol=1e-6)
    ref = api.localize(viewer.layers["cells"].data, read_card(models / MODEL, "user"), regions=regions,
                       isolated=False)
    for v, b in zip(shapes.data, ref.boxes):
        np.testing.assert_allclose(np.asarray(v).min(0), b[:2], atol=1e-4)
        np.testing.assert_allclose(np.asarray(v).max(0), b[2:], atol=1e-4)
    assert list(f["class"]) == ref.classes and len(points.data) == 3
    assert "3 regions" in w.status.value
    assert not re.search(r"\b0\.0 s\b", w.status.value), w.status.value  # a fast run says "NN ms"
    assert re.search(r", (\d+ ms|\d+\.\d s)\)", w.status.value), w.status.value
    assert shapes.name not in w._region_choices()  # its own result is not offered as regions
    # drawn regions untouched; a re-run replaces the result
    assert len(drawn.data) == 3
    drawn.data = list(drawn.data)[:2]
    run(w, qtbot)
    assert ours(viewer, "localization") == [shapes] and len(shapes.data) == 2


def test_each_frame_then_the_current_frame_and_regions_in_a_stack(localize, qtbot):
    viewer, w = localize
    stack = viewer.add_image(np.stack([cells(0), cells(1)[::-1], cells(2)[:, ::-1]]), name="movie")
    w.image.value = stack
    assert list(w.mode.choices) == ["current frame", "each frame of the stack", "each region of a Shapes layer"]
    w.mode.value = "each frame of the stack"
    run(w, qtbot)
    (shapes,) = [lyr for lyr in ours(viewer, "localization") if lyr.name == "movie [tiny-loc]"]
    assert shapes.ndim == 3 and len(shapes.data) == 3
    assert [int(np.asarray(v)[0, 0]) for v in shapes.data] == [0, 1, 2]  # frame index first
    assert list(shapes.features["frame"]) == [0, 1, 2]
    for v in shapes.data:
        assert _inside(v, (0, 0, 96, 128))
    before = [np.array(v) for v in shapes.data]

    w.mode.value = "current frame"
    viewer.dims.current_step = (1, 0, 0)
    stack.data = np.stack([cells(0), cells(5), cells(2)[:, ::-1]])  # frame 1 changed
    run(w, qtbot)
    assert len(shapes.data) == 3 and sorted(shapes.features["frame"]) == [0, 1, 2]
    by_frame = {int(fr): np.array(v) for v, fr in zip(shapes.data, shapes.features["frame"])}
    np.testing.assert_allclose(by_frame[0], before[0])
    np.testing.assert_allclose(by_frame[2], before[2])
    assert "frame 1:" in w.status.value and "3 in the stack" in w.status.value

    # regions drawn in frames 0 and 2 of the stack: one box each, in its frame
    drawn = viewer.add_shapes([np.array([[f, 8, 10], [f, 8, 60], [f, 50, 60], [f, 50, 10]], float)
                               for f in (0, 2)], shape_type="rectangle", name="stack regions")
    w.regions.value = drawn.name
    w.mode.value = "each region of a Shapes layer"
    run(w, qtbot)
    assert len(shapes.data) == 2 and list(shapes.features["frame"]) == [0, 2]
    for v in shapes.data:
        assert _inside(v, (8, 10, 50, 60))
    assert shapes.metadata[RESULT_KEY]["mode"] == "regions"


def test_regions_mode_without_shapes_is_a_clear_message(localize):
    viewer, w = localize
    w.mode.value = "each region of a Shapes layer"
    w.run()
    assert not w.runner.running and "draw a rectangle" in w.status.value
    empty = viewer.add_shapes(name="empty")
    w.regions.value = empty.name
    w.run()
    assert not w.runner.running and "has no shapes" in w.status.value
    assert not ours(viewer, "localization") and w.run_btn.enabled and w.progress.value == 0
