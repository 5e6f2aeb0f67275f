"""The Segment and Detect widgets on large lazy layers (dask / multiscale): processed block (tile) by block,
never loaded whole -- the layer's array refuses any read of the whole from the plugin's code -- with
the same objects as a whole-image run of the same image, and Cancel mid-way leaves the widget usable."""
import os
import sys
import time

import numpy as np
import pytest
from test_detect_widget import CLASSES, MODEL, squares

from napari_cnnvision.layers.common import RESULT_KEY

da = pytest.importorskip("dask.array")
torch = pytest.importorskip("torch")

PLUGIN_DIR = os.sep + "napari_cnnvision" + os.sep


def _plugin_is_reading() -> bool:
    f = sys._getframe(2)
    while f is not None:
        if PLUGIN_DIR in f.f_code.co_filename:
            return True
        f = f.f_back
    return False


class NoWholeRead:
    """A dask array that the plugin may only read in pieces of at most ``limit`` elements: its
    ``np.asarray``, ``compute()`` or a larger slice, asked for by the plugin's code, raises (and is
    recorded in ``violations``). napari's own reads (to display it) are allowed."""

    def __init__(self, arr, limit: int):
        self.arr, self.limit = arr, limit
        self.reads: list[int] = []  # sizes of the plugin's reads
        self.violations: list[int] = []
        self.delay = 0.0  # seconds each plugin read takes: a slow disk, so that Cancel lands mid-way

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)
    ndim = property(lambda self: self.arr.ndim)
    size = property(lambda self: self.arr.size)

    def __len__(self):
        return self.shape[0]

    def _read(self, n: int) -> None:
        if _plugin_is_reading():
            self.reads.append(int(n))
            time.sleep(self.delay)
            if n > self.limit:
                self.violations.append(int(n))
                raise AssertionError(f"the plugin read {n} elements of the lazy image at once")

    def __getitem__(self, key):
        out = self.arr[key]
        if isinstance(out, da.Array):
            self._read(out.size)
            return out.compute()
        return out

    def __array__(self, dtype=None, copy=None):
        self._read(self.size)
        return np.asarray(self.arr.compute(), dtype=dtype)

    def compute(self):
        self._read(self.size)
        return self.arr.compute()


@pytest.fixture(scope="module")
def models(tiny_detector):
    """A user model folder with test_detect_widget's square detector (conftest's, trained once)."""
    return tiny_detector


@pytest.fixture(scope="module")
def shared_pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


@pytest.fixture
def small_blocks(monkeypatch, tmp_path):
    """Block-wise processing above 100x100 pixels, in small blocks; results in a test cache folder."""
    from napari_cnnvision.scaleout import lazy_detect, lazy_layers
    from napari_cnnvision.scaleout.large import BLOCK_PIXELS_ENV

    monkeypatch.setenv(BLOCK_PIXELS_ENV, str(100 * 100))  # the command line's threshold, shared
    monkeypatch.setattr(lazy_layers, "SEGMENT_BLOCK", 96)
    monkeypatch.setattr(lazy_layers, "PYRAMID_SIDE", 64)
    monkeypatch.setattr(lazy_layers, "SAMPLE_PIXELS", 100 * 100)  # the normalization's subsample: every 2nd pixel
    monkeypatch.setattr(lazy_detect, "TILE_BATCH", 2)
    monkeypatch.setenv("NAPARI_CNNVISION_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def blobs(size=192, seed=5) -> np.ndarray:
    """Synthetic nuclei (uint16), some on the block borders (half the size: 2 x 2 blocks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    centres = [(cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)) for cy in range(12, size, 24)
               for cx in range(12, size, 24)]
    centres += [(size // 2 + rng.uniform(-1, 1), c) for c in range(24, size, 48)]
    centres += [(c, size // 2 + rng.uniform(-1, 1)) for c in range(36, size, 48)]
    for cy, cx in centres:
        r = rng.uniform(4, 6)
        img += 1000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 65535).astype(np.uint16)


def ap50(a: np.ndarray, b: np.ndarray) -> float:
    """TP / (TP + FP + FN) at IoU 0.5 between two label images."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    iou = inter / (area_a[pairs[0]] + area_b[pairs[1]] - inter)
    na, nb, tp = len(np.unique(a)) - 1, len(np.unique(b)) - 1, int((iou > 0.5).sum())
    return tp / (na + nb - tp)


def wait(w, qtbot, timeout=120000):
    qtbot.waitUntil(lambda: not w.runner.running, timeout=timeout)


def result_layers(viewer, kind):
    return [lyr for lyr in viewer.layers if lyr.metadata.get(RESULT_KEY, {}).get("kind") == kind]


def test_needs_blocks_only_for_large_lazy_arrays(small_blocks):
    from napari_cnnvision.scaleout.lazy_layers import full_resolution, needs_blocks

    assert not needs_blocks(np.zeros((200, 200)))  # in memory: loading is free
    assert not needs_blocks(da.zeros((90, 90)))  # lazy but small: simply loaded
    assert needs_blocks(da.zeros((200, 200)))
    assert needs_blocks(da.zeros((200, 200, 3)), rgb=True) and not needs_blocks(da.zeros((200, 50, 3)), rgb=True)
    levels = [da.zeros((400, 400)), np.zeros((50, 50))]
    assert full_resolution(levels, multiscale=True) is levels[0]


def test_the_widgets_threshold_is_the_command_lines(monkeypatch):
    from napari_cnnvision.scaleout import large
    from napari_cnnvision.scaleout.lazy_layers import needs_blocks

    monkeypatch.delenv(large.BLOCK_PIXELS_ENV, raising=False)
    assert not needs_blocks(da.zeros((4096, 4096), chunks=1024))  # the default: 4096 x 4096
    assert needs_blocks(da.zeros((4096, 4097), chunks=1024))
    monkeypatch.setattr(large, "DEFAULT_BLOCK_PIXELS", 200 * 200)  # read from large.py, not a copy
    assert needs_blocks(da.zeros((200, 201)))
    monkeypatch.setenv(large.BLOCK_PIXELS_ENV, "2e6")  # the same variable as the command line's
    assert not needs_blocks(da.zeros((1000, 2000))) and needs_blocks(da.zeros((1000, 2001)))
    monkeypatch.setenv(large.BLOCK_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=large.BLOCK_PIXELS_ENV):
        needs_blocks(da.zeros((10, 10)))
    from types import SimpleNamespace

    from napari_cnnvision.core.axes import InputError
    from napari_cnnvision.widgets import _lazy

    layer = SimpleNamespace(data=da.zeros((10, 10)), multiscale=False, rgb=False, name="big")
    with pytest.raises(InputError, match=large.BLOCK_PIXELS_ENV):  # the widgets' Run shows it as a message
        _lazy.blockwise_source(layer)
    assert large.BLOCK_PIXELS_ENV in _lazy.describe(layer, "segmented")  # the layer note says it, no traceback


def test_blockwise_labels_go_to_the_cache_or_the_chosen_folder_under_a_safe_name(small_blocks, tmp_path):
    from napari_cnnvision.scaleout.lazy_layers import output_path

    assert output_path(None, "scan: 1/2", "nuclei-unet") == small_blocks / "labels" / "scan_ 1_2 [nuclei-unet].zarr"
    assert output_path(tmp_path / "mine", "a", "m") == tmp_path / "mine" / "a [m].zarr"


def test_numpy_class_nms_keeps_what_torchvision_keeps():
    from napari_cnnvision.backends.detection.tiling import class_nms as torch_nms
    from napari_cnnvision.scaleout.lazy_detect import class_nms

    rng = np.random.default_rng(1)
    y, x = rng.uniform(0, 200, (2, 300))
    h, w = rng.uniform(5, 40, (2, 300))
    boxes = np.column_stack([y, x, y + h, x + w])
    ids, scores = rng.integers(0, 3, 300), rng.uniform(0, 1, 300)
    for iou in (0.3, 0.5, 0.7):
        assert list(class_nms(boxes, ids, scores, iou)) == list(torch_nms(boxes, ids, scores, iou))


def test_segment_lazy_multiscale_layer_block_by_block_matches_a_whole_image_run(
        make_napari_viewer, qtbot, shared_pool, small_blocks):
    from napari_cnnvision.widgets import _compute
    from napari_cnnvision.widgets.segment import SegmentWidget

    img = blobs()
    viewer = make_napari_viewer()
    viewer.add_image(img, name="whole")
    lazy = NoWholeRead(da.from_array(img, chunks=64), limit=160 * 160)  # windows: a 96-pixel block + 64 of margin
    viewer.add_image([lazy, img[::2, ::2]], multiscale=True, name="lazy")  # an OME-Zarr-like pyramid
    _compute._POOLS[viewer] = shared_pool
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = "nuclei-unet"
    w.tiles.value = "none"
    w.image.value = viewer.layers["whole"]
    assert w.lazy_note.native.isHidden() and w.labels_dir.native.isHidden()
    w.run()
    wait(w, qtbot)
    (whole,) = result_layers(viewer, "segmentation")
    ref = np.array(whole.data)
    assert "objects in" in w.status.value, w.status.value

    w.image.value = viewer.layers["lazy"]
    assert not w.lazy_note.native.isHidden() and "block by block" in w.lazy_note.value
    assert not w.labels_dir.native.isHidden()
    # Cancel mid-way: after the first of 4 blocks (each read slowed, so a fast machine cannot finish first)
    lazy.delay = 0.5
    w.run()
    qtbot.waitUntil(lambda: w.progress.value >= 25, timeout=60000)
    w.cancel()
    wait(w, qtbot)
    assert w.status.value == "Cancelled." and w.run_btn.enabled and not w.cancel_btn.enabled
    assert result_layers(viewer, "segmentation") == [whole]  # nothing added, nothing replaced
    assert not list((small_blocks / "labels").glob("*"))  # the half-written labels are gone
    assert 0 < len(lazy.reads) < 4 + 1  # the normalization's subsample and the blocks read so far

    lazy.reads.clear()
    lazy.delay = 0.0
    w.run()
    wait(w, qtbot)
    assert "objects in lazy [nuclei-unet]" in w.status.value and "4 blocks" in w.status.value, w.status.value
    assert not lazy.violations and len(lazy.reads) == 1 + 4 and max(lazy.reads) <= 160 * 160
    layer = viewer.layers["lazy [nuclei-unet]"]
    assert layer.multiscale and [lv.shape for lv in layer.data] == [(192, 192), (96, 96), (48, 48)]
    assert type(layer.data[0]).__module__.startswith("zarr")  # read lazily from the OME-Zarr folder
    meta = layer.metadata[RESULT_KEY]
    assert meta["blockwise"]["blocks"] == 4 and meta["source"] == "lazy"
    assert os.path.dirname(meta["blockwise"]["path"]) == str(small_blocks / "labels")
    labels = np.asarray(layer.data[0])
    np.testing.assert_array_equal(np.asarray(layer.data[2]), labels[::4, ::4])
    assert set(layer.features["label"]) == set(np.unique(labels)) - {0}
    assert len(np.unique(ref)) - 1 >= 60
    assert ap50(ref, labels) >= 0.95  # objects across block borders stitched, none doubled

    # a large lazy stack is refused with a clear message, and the widget stays usable
    viewer.add_image(NoWholeRead(da.zeros((3, 192, 192), np.uint16, chunks=64), 160 * 160), name="stack")
    w.image.value = viewer.layers["stack"]
    w.run()
    assert not w.runner.running and "large lazy stack" in w.status.value and w.run_btn.enabled


def test_detect_lazy_dask_layer_tile_by_tile_gives_the_whole_image_runs_boxes(
        make_napari_viewer, qtbot, shared_pool, small_blocks, models):
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.widgets import _compute
    from napari_cnnvision.widgets.detect import DetectWidget

    big = (np.concatenate([np.concatenate([squares(seed=2 * r + c) for c in range(2)], axis=1) for r in range(2)])
           * 255).astype(np.uint8)  # 128 x 128: 4 red and 4 green squares
    viewer = make_napari_viewer()
    viewer.add_image(big, name="whole", rgb=True)
    lazy = NoWholeRead(da.from_array(big, chunks=(64, 64, 3)), limit=64 * 64 * 3)  # read tile by tile
    viewer.add_image(lazy, name="lazy", rgb=True)
    _compute._POOLS[viewer] = shared_pool
    w = DetectWidget(viewer, ModelRegistry(user_dir=models))
    viewer.window.add_dock_widget(w)
    w.model.value = MODEL
    w.image.value = viewer.layers["whole"]
    assert w.note.native.isHidden()
    w.run()
    wait(w, qtbot)
    ref = w.last_result
    assert ref.n_objects >= 6, w.status.value

    w.image.value = viewer.layers["lazy"]
    assert not w.note.native.isHidden() and "tile by tile" in w.note.value
    # the model's 64-pixel tiles with 32 pixels of overlap, as a whole-image run: 3 x 3, 2 at a time;
    # each read slowed, so that Cancel lands mid-way on a fast machine too
    lazy.delay = 0.5
    w.run()
    qtbot.waitUntil(lambda: w.progress.value >= 20, timeout=60000)  # after the first 2 tiles
    w.cancel()
    wait(w, qtbot)
    assert w.status.value == "Cancelled." and w.run_btn.enabled
    assert not result_layers(viewer, "detection") or all(
        lyr.metadata[RESULT_KEY]["source"] == "whole" for lyr in result_layers(viewer, "detection"))

    lazy.reads.clear()
    lazy.delay = 0.0
    w.run()
    wait(w, qtbot)
    res = w.last_result
    assert "read tile by tile" in w.status.value and not lazy.violations, w.status.value
    assert len(lazy.reads) == 9 and max(lazy.reads) == 64 * 64 * 3
    # the same boxes as the whole-image run (same tiles, same merge)
    assert res.n_objects == ref.n_objects and res.classes == ref.classes
    np.testing.assert_allclose(res.boxes, ref.boxes, atol=1e-3)
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-5)
    shapes = viewer.layers["lazy [sq-yolo]"]
    assert len(shapes.data) == res.n_objects and shapes.metadata[RESULT_KEY]["blockwise"]
    assert len(viewer.layers["lazy [sq-yolo] centres"].data) == res.n_objects
    assert set(res.classes) == set(CLASSES)
