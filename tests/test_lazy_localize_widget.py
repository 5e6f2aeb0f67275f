"""The Localize widget on a lazy (dask) stack layer: read one frame at a time -- the layer's array
refuses any larger read from the plugin's code -- with the same boxes, classes and probabilities as
the same stack in memory, in each of its modes."""
import numpy as np
import pytest

pytest.importorskip("torch")
da = pytest.importorskip("dask.array")

from test_detect_widget import make_widget, ours, run, shared_pool  # noqa: E402,F401  (fixtures)
from test_localize_widget import MODEL, cells, models  # noqa: E402,F401
from test_widget_lazy import NoWholeRead  # noqa: E402

from napari_cnnvision.layers.common import RESULT_KEY  # noqa: E402

FRAME = 96 * 128


@pytest.fixture
def two_stacks(make_napari_viewer, models, shared_pool):  # noqa: F811
    """A viewer with the same 4-frame stack in memory ("movie") and lazy ("lazy"), and the widget."""
    from napari_cnnvision.widgets.localize import LocalizeWidget

    stack = np.stack([cells(0), cells(1)[::-1], cells(2)[:, ::-1], cells(3)])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="movie")
    lazy = NoWholeRead(da.from_array(stack, chunks=(1, 48, 64)), limit=FRAME)
    viewer.add_image(lazy, name="lazy")
    w = make_widget(LocalizeWidget, viewer, models, shared_pool, MODEL)
    return viewer, w, lazy


def _result(viewer, name):
    (shapes,) = [lyr for lyr in ours(viewer, "localization") if lyr.name == f"{name} [{MODEL}]"]
    return shapes


def _same(a, b):
    assert len(a.data) == len(b.data)
    for va, vb in zip(a.data, b.data):
        np.testing.assert_allclose(va, vb, atol=1e-4)
    for col in ("frame", "class", "region"):
        if col in b.features:
            assert list(a.features[col]) == list(b.features[col]), col
    for col in ("p_a", "p_b", "score"):
        np.testing.assert_allclose(a.features[col], b.features[col], atol=1e-5)


def test_each_frame_of_a_lazy_stack_read_frame_by_frame_like_the_stack_in_memory(two_stacks, qtbot):
    viewer, w, lazy = two_stacks
    w.mode.value = "each frame of the stack"
    w.image.value = viewer.layers["movie"]
    w.mode.value = "each frame of the stack"
    run(w, qtbot)
    ref = _result(viewer, "movie")
    assert list(ref.features["frame"]) == [0, 1, 2, 3]

    w.image.value = viewer.layers["lazy"]
    w.mode.value = "each frame of the stack"
    run(w, qtbot)
    got = _result(viewer, "lazy")
    assert not lazy.violations and lazy.reads == [FRAME] * 4  # each frame once, alone
    _same(got, ref)
    assert "4 frames" in w.status.value and "read frame by frame" in w.status.value, w.status.value
    assert got.metadata[RESULT_KEY]["frames"] == [0, 1, 2, 3]

    # the current frame of the lazy stack: that frame alone, merged into the stack's result
    lazy.reads.clear()
    w.mode.value = "current frame"
    viewer.dims.current_step = (2, 0, 0)
    run(w, qtbot)
    assert lazy.reads == [FRAME] and not lazy.violations
    assert _result(viewer, "lazy") is got and sorted(got.features["frame"]) == [0, 1, 2, 3]
    assert "frame 2:" in w.status.value


def test_regions_of_a_lazy_stack_only_their_frames_read(two_stacks, qtbot):
    viewer, w, lazy = two_stacks
    rect = lambda f, y0, x0, y1, x1: np.array([[f, y0, x0], [f, y0, x1], [f, y1, x1], [f, y1, x0]], float)
    drawn = viewer.add_shapes([rect(0, 8, 10, 50, 60), rect(3, 40, 60, 90, 120), rect(0, 50, 66, 92, 124)],
                              shape_type="rectangle", name="regions")
    for name in ("movie", "lazy"):
        w.image.value = viewer.layers[name]
        w.mode.value = "each region of a Shapes layer"
        w.regions.value = drawn.name
        run(w, qtbot)
    ref, got = _result(viewer, "movie"), _result(viewer, "lazy")
    assert list(ref.features["region"]) == [0, 2, 1] and list(ref.features["frame"]) == [0, 0, 3]
    _same(got, ref)
    assert not lazy.violations and lazy.reads == [FRAME] * 2  # frames 0 and 3 only
    assert got.metadata[RESULT_KEY]["mode"] == "regions"

    # regions in no frame of the stack: a clear message, nothing read
    lazy.reads.clear()
    drawn.data = [rect(7, 8, 10, 50, 60)]
    w.run()
    assert not w.runner.running and "none of the regions lies in a frame" in w.status.value
    assert lazy.reads == [] and w.run_btn.enabled


def test_frame_regions_groups_regions_by_frame():
    from napari_cnnvision.core.axes import InputError
    from napari_cnnvision.widgets.localize import frame_regions

    regions = [[1, 0, 0, 5, 5], [0, 0, 0, 4, 4], [0, 0, 9, 9], [1, 2, 2, 8, 8]]  # the third in every frame
    assert frame_regions(regions, 3) == [(0, [(1, [0, 0, 4, 4]), (2, [0, 0, 9, 9])]),
                                         (1, [(0, [0, 0, 5, 5]), (2, [0, 0, 9, 9]), (3, [2, 2, 8, 8])]),
                                         (2, [(2, [0, 0, 9, 9])])]
    with pytest.raises(InputError, match="none of the regions"):
        frame_regions([[5, 0, 0, 4, 4]], 3)
