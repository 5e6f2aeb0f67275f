"""The shared predict path without a framework: the per-frame runner, Z-slice input and stitching,
frame assembly, and the model card's normalization (numpy only, fast)."""
import numpy as np
import pytest

from napari_cnnvision.backends.common import FrameSegmentation, assemble_segmentation, model_job, prepare_input
from napari_cnnvision.backends.frames import frame_indices, run_frames
from napari_cnnvision.backends.stitch import stitch_slices
from napari_cnnvision.core.axes import InputError, guess_axes
from napari_cnnvision.core.normalize import normalize_for, percentile_normalize, resolve_normalization
from napari_cnnvision.core.progress import Cancelled, RecordingProgress
from napari_cnnvision.core.registry import CorruptModel


def balls(shape=(24, 64, 64), centres=((12, 20, 20), (10, 44, 40)), radius=8.0):
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    out = np.zeros(shape, np.int32)
    for k, (cz, cy, cx) in enumerate(centres, 1):
        out[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = k
    return out


def slice_wise(volume):
    """What a 2D model run slice by slice gives: each slice's objects numbered 1..n on their own."""
    from scipy import ndimage as ndi

    return [ndi.label(s > 0)[0].astype(np.int32) for s in volume]


# the runner ----------------------------------------------------------------------------
def test_runner_reports_every_frame_and_tile_and_can_be_cancelled():
    prog = RecordingProgress()

    def per_frame(step):
        with step.timed("work_s"):
            for i in range(1, 3):
                step.tile(i, 2)
        step.notes.append("(note)")
        return step.index

    outs = run_frames(frame_indices((3,)), per_frame, prog, describe=lambda o: f"got {o}")
    assert outs == [(0,), (1,), (2,)]
    msgs = [e.message for e in prog.events]
    assert msgs == ["frame 1/3: tile 1/2", "frame 1/3: tile 2/2", "frame 1/3: got (0,) (note)",
                    "frame 2/3: tile 1/2", "frame 2/3: tile 2/2", "frame 2/3: got (1,) (note)",
                    "frame 3/3: tile 1/2", "frame 3/3: tile 2/2", "frame 3/3: got (2,) (note)"]
    fr = [e.fraction for e in prog.events]
    assert fr == sorted(fr) and fr[-1] == 1.0
    with pytest.raises(Cancelled):  # a stop request during a tile ends the run at once
        run_frames(frame_indices((3,)), per_frame, RecordingProgress(stop_after=4))


def test_frame_indices_select_the_first_leading_axis():
    assert frame_indices(()) == [()]
    assert frame_indices((4,), [2, 9, -1]) == [(2,)]
    assert frame_indices((2, 3), [1]) == [(1, 0), (1, 1), (1, 2)]
    assert len(frame_indices((2, 3))) == 6


# axes: Z stacks for a 2D model -----------------------------------------------------------
def test_z_stack_for_a_2d_model_is_slice_wise_only_when_asked():
    vol = np.zeros((5, 32, 32), np.uint8)
    assert guess_axes(vol.shape, 2) == "TYX"  # unchanged guess: a 3-D array is a time-lapse
    inp = prepare_input(vol, None, "m", 2, 1)
    assert inp.loop_axes == "T" and not inp.slice_wise
    inp = prepare_input(vol, "ZYX", "m", 2, 1)
    assert inp.loop_axes == "Z" and inp.slice_wise and inp.frame_axes == "YX"
    inp = prepare_input(np.zeros((2, 5, 32, 32, 3)), "TZYXC", "m", 2, 3)
    assert inp.loop_axes == "TZ" and inp.frame_axes == "YXC" and inp.labels_shape == (2, 5, 32, 32)
    assert prepare_input(np.zeros((8, 32, 32)), "ZYX", "m", 3, 1).loop_axes == ""  # a 3D model keeps Z
    with pytest.raises(InputError, match="3D model"):
        prepare_input(np.zeros((4, 32, 32)), "TYX", "m", 3, 1)
    with pytest.raises(InputError, match="axes= argument"):
        guess_axes((2, 3, 4, 5, 6), 2)


def test_z_stack_is_normalized_as_one_volume():
    vol = np.stack([np.full((16, 16), v, np.float32) for v in (0, 10, 20, 30)])
    vol[3, 0, 0] = 31
    inp = prepare_input(vol, "ZYX", "m", 2, 1)
    norm = {"type": "percentile", "pmin": 0.0, "pmax": 100.0}
    whole = percentile_normalize(vol, 0, 100)
    for z in range(4):  # slice z of the normalized volume, not the slice normalized on its own
        np.testing.assert_allclose(inp.normalized((z,), norm), whole[z])
    t = prepare_input(vol, "TYX", "m", 2, 1)
    np.testing.assert_allclose(t.normalized((1,), norm), percentile_normalize(vol[1], 0, 100))


# stitching -------------------------------------------------------------------------------
def test_stitching_a_ball_gives_one_object_unstitched_one_per_slice():
    vol = balls(centres=((12, 32, 32),))
    n_slices = int(np.any(vol > 0, axis=(1, 2)).sum())
    parts = slice_wise(vol)
    inp = prepare_input(vol.astype(np.float32), "ZYX", "m", 2, 1)
    idx = inp.indices()
    outs = [FrameSegmentation(p, np.full(p.max(), 0.9)) for p in parts]
    labels, table, _, warns = assemble_segmentation(inp, idx, outs, model_name="m")
    assert len(table["label"]) == n_slices == len(np.unique(labels)) - 1 == 17
    assert any("slice by slice" in w and "stitch_z=True" in w for w in warns)
    labels, table, _, warns = assemble_segmentation(inp, idx, outs, stitch_z=True, model_name="m")
    assert len(table["label"]) == 1 and len(np.unique(labels)) == 2
    assert table["area"][0] == (vol > 0).sum()
    assert table["centroid_z"][0] == pytest.approx(12) and table["probability"][0] == pytest.approx(0.9)
    assert any("stitched" in w for w in warns)
    zero = [FrameSegmentation(np.zeros_like(p), np.zeros(0)) for p in parts]  # nothing found anywhere
    labels, table, _, _ = assemble_segmentation(inp, idx, zero, stitch_z=True)
    assert not labels.any() and len(table["label"]) == 0 and "centroid_z" in table


def test_stitching_keeps_neighbours_apart_and_needs_overlap():
    vol = balls()  # two balls side by side
    parts = np.stack(slice_wise(vol))
    offset, unique = 0, np.zeros_like(parts)
    for z, p in enumerate(parts):
        unique[z] = np.where(p > 0, p + offset, 0)
        offset = max(offset, int(unique[z].max()))
    stitched, lut = stitch_slices(unique)
    assert len(np.unique(stitched)) - 1 == 2
    np.testing.assert_array_equal(stitched, lut[unique])
    for k in (1, 2):  # each stitched object is exactly one ball
        ball = vol == k
        assert len(np.unique(stitched[ball])) == 1 and (stitched == stitched[ball][0]).sum() == ball.sum()
    # shifted slices that no longer overlap enough stay separate objects
    a = np.zeros((2, 20, 20), np.int32)
    a[0, 2:8, 2:8] = 1
    a[1, 6:12, 6:12] = 2  # IoU 4 / 68
    assert len(np.unique(stitch_slices(a)[0])) - 1 == 2
    assert len(np.unique(stitch_slices(a, iou_thresh=0.05)[0])) - 1 == 1
    with pytest.raises(ValueError):
        stitch_slices(a[0])


def test_assembly_of_a_time_lapse_keeps_labels_unique_and_frames():
    inp = prepare_input(np.zeros((3, 16, 16), np.float32), "TYX", "m", 2, 1)
    one = np.zeros((16, 16), np.int32)
    one[2:5, 2:5] = 1
    one[8:12, 8:12] = 2
    idx = inp.indices([0, 2])
    outs = [FrameSegmentation(one, np.array([0.5, 0.7]), [np.zeros((4, 2))]) for _ in idx]
    labels, table, polys, warns = assemble_segmentation(inp, idx, outs, want_polygons=True)
    assert table["frame"].tolist() == [0, 0, 2, 2] and table["label"].tolist() == [1, 2, 3, 4]
    assert table["probability"].tolist() == [0.5, 0.7, 0.5, 0.7]
    assert not labels[1].any() and set(np.unique(labels[2])) == {0, 3, 4}
    assert [p[0, 0] for p in polys] == [0, 2] and polys[0].shape == (4, 3)
    assert inp.processed(idx) == [0, 2] and not warns
    empty = assemble_segmentation(inp, [], [], want_polygons=True)
    assert empty[2] == [] and "frame" in empty[1] and len(empty[1]["label"]) == 0


def test_model_job_accepts_a_payload_or_a_name():
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import ModelCard

    seen = []
    job = model_job(lambda image, card, progress, **kw: seen.append((card, kw)))
    card = ModelCard("m", "segment", "unet", path="/x")
    job(progress=None, image=None, model=card_payload(card), pmin=2)
    job(progress=None, image=None, model="by-name")
    assert seen[0][0].name == "m" and seen[0][0].path == "/x" and seen[0][1] == {"pmin": 2}
    assert seen[1][0] == "by-name"


# normalization ---------------------------------------------------------------------------
def test_the_card_decides_the_normalization_unless_the_caller_chooses():
    x = np.random.default_rng(0).gamma(2.0, 30.0, (64, 64)).astype(np.float32)
    card = {"type": "percentile", "pmin": 0.0, "pmax": 100.0}
    y, used = normalize_for(x, card)
    assert used == {"type": "percentile", "pmin": 0.0, "pmax": 100.0, "source": "card"}
    assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
    default = percentile_normalize(x, 1.0, 99.8)
    assert np.abs(y - default).max() > 0.05  # a different input than the old fixed 1/99.8
    y2, used2 = normalize_for(x, card, pmin=1.0, pmax=99.8)  # an explicit choice overrides the card
    assert used2["source"] == "caller" and np.array_equal(y2, default)
    assert resolve_normalization(card, pmax=99.0) == {"type": "percentile", "pmin": 0.0, "pmax": 99.0,
                                                      "source": "caller"}
    y3, used3 = normalize_for(np.array([[0, 255]], np.uint8), {"type": "scale", "factor": 1 / 255})
    assert used3["type"] == "scale" and y3.tolist() == [[0.0, 1.0]]
    assert normalize_for(x, None)[1]["pmin"] == 1.0  # no card normalization: 1 / 99.8
    from napari_cnnvision.core.registry import PRETRAINED

    coco = next(c for c in PRETRAINED if c.backend == "fasterrcnn")  # torchvision's weights: pixels / 255
    y4, used4 = normalize_for(np.full((4, 4, 3), 51, np.uint8), coco.normalization)
    assert used4["type"] == "scale" and np.allclose(y4, 0.2)
    with pytest.raises(CorruptModel, match="unknown"):
        normalize_for(x, {"type": "zscore"}, model="model 'm'")
    with pytest.raises(CorruptModel, match="factor"):
        normalize_for(x, {"type": "scale"})
    with pytest.raises(InputError, match="percentiles"):
        normalize_for(x, card, pmin=50, pmax=10)
