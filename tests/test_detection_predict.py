"""Detection inference: inputs of every kind, tiling and merging, stacks, the worker job, the CLI.

Most tests use a deterministic stand-in network (``BlobDetector``: one box per bright blob of
the normalized input, in torchvision's detection convention), so the expected boxes are known;
the real networks are tiny, randomly initialised ones (nothing is downloaded).
"""
import json
import tracemalloc

import numpy as np
import pytest
import torch

from napari_cnnvision.backends.detection import predict as P
from napari_cnnvision.backends.detection.predict import Detector, detect
from napari_cnnvision.backends.detection.tiling import axis_starts, detect_tiled, tile_windows
from napari_cnnvision.core.axes import InputError

CLASSES = ["red", "green"]


class BlobDetector(torch.nn.Module):
    """Boxes around connected pixels brighter than 0.5 (channel mean); class red / green by
    which channel is brighter; score = the blob's mean brightness. Counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.inputs = []  # (C, H, W) shapes seen

    def forward(self, images):
        from scipy import ndimage

        self.calls += 1
        out = []
        for im in images:
            x = im.cpu().numpy()
            self.inputs.append(x.shape)
            mask = x.mean(0) > 0.5
            lab, n = ndimage.label(mask)
            boxes, labels, scores = [], [], []
            for k, sl in enumerate(ndimage.find_objects(lab)):
                ys, xs = sl
                boxes.append([xs.start, ys.start, xs.stop, ys.stop])
                region = x[:, lab == k + 1]
                labels.append(1 if region[0].mean() >= region[-1].mean() else 2)
                scores.append(min(0.99, float(region.mean())))
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64),
                        "scores": torch.tensor(scores, dtype=torch.float32)})
        return out


def blob_detector(input_size=None, overlap=None):
    return Detector(BlobDetector(), list(CLASSES), "blobs", 3, input_size, thresholds={"score": 0.5, "nms": 0.5},
                    tile_overlap=overlap)


def scene(shape=(200, 300), boxes=((20, 30, 60, 90, "red"), (120, 200, 170, 260, "green"))):
    """An RGB uint8 image with filled rectangles (y0, x0, y1, x1, colour)."""
    img = np.zeros((*shape, 3), np.uint8)
    for y0, x0, y1, x1, col in boxes:
        img[y0:y1, x0:x1] = (230, 200, 0) if col == "red" else (0, 200, 230)
    return img


def as_set(res):
    return sorted((tuple(np.round(b).astype(int)), c) for b, c in zip(res.boxes, res.classes))


# --- inputs ------------------------------------------------------------------------------
def test_boxes_come_back_in_row_column_order():
    res = detect(scene(), blob_detector())
    assert as_set(res) == [((20, 30, 60, 90), "red"), ((120, 200, 170, 260), "green")]
    assert res.image_shape == (200, 300) and not res.has_frames and res.model == "blobs"
    assert res.counts() == {"red": 1, "green": 1}
    assert res.score_thresh == 0.5 and res.nms_thresh == 0.5


def test_gray_rgba_16bit_12bit_and_float_give_the_same_boxes():
    rgb = scene()
    ref = as_set(detect(rgb, blob_detector()))
    gray = rgb.max(axis=2)  # bright where the rectangles are
    det = blob_detector()
    g = detect(gray, det)
    assert [b for b, _ in as_set(g)] == [b for b, _ in ref]
    assert det.model.inputs[-1][0] == 3  # replicated to the model's 3 channels
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    r = detect(rgba, blob_detector())
    assert as_set(r) == ref and any("alpha" in w for w in r.warnings)
    r16 = detect(rgb.astype(np.uint16) * 257, blob_detector())  # full 16-bit range
    assert as_set(r16) == ref and any("16-bit" in w for w in r16.warnings)
    r12 = detect(rgb.astype(np.uint16) * 16, blob_detector())  # 12 bits used (a typical camera)
    assert as_set(r12) == ref and any("12 bits" in w for w in r12.warnings)
    rf = detect(rgb.astype(np.float32) / 255, blob_detector())
    assert as_set(rf) == ref
    assert r16.normalization["factor"] == pytest.approx(1 / 65535)


def test_percentile_normalization_from_the_card():
    det = blob_detector()
    det.normalization = {"type": "percentile", "pmin": 1.0, "pmax": 99.8}
    dim = (scene().astype(np.float32) * 0.01 + 5).astype(np.float32)  # dark, offset: scale would miss it
    res = detect(dim, det)
    assert [b for b, _ in as_set(res)] == [(20, 30, 60, 90), (120, 200, 170, 260)]
    assert res.normalization["type"] == "percentile"


def test_empty_image_gives_an_empty_result():
    res = detect(np.zeros((64, 64, 3), np.uint8), blob_detector())
    assert res.n_objects == 0 and res.boxes.shape == (0, 4) and res.counts() == {"red": 0, "green": 0}
    from napari_cnnvision.layers.detection import detection_layers

    layers = detection_layers(res, "img")
    assert [t for _, _, t in layers] == ["shapes", "points"] and len(layers[0][0]) == 0


@pytest.mark.parametrize("image, axes, msg", [
    (np.zeros((64, 64, 2), np.uint8), None, "2 channels"),
    (np.zeros((4, 4, 3), np.uint8), None, "too small"),
    (np.zeros((2, 3, 32, 32), np.uint8), "TZYX", "not supported"),
    (np.array([["a"]]), None, "hold numbers"),
])
def test_bad_input_is_a_clear_error(image, axes, msg):
    with pytest.raises(InputError, match=msg):
        detect(image, blob_detector(), axes=axes)


def test_bad_thresholds_and_a_model_of_another_task():
    with pytest.raises(InputError, match="score threshold"):
        detect(scene(), blob_detector(), score_thresh=1.5)
    from napari_cnnvision.core.registry import ModelRegistry

    seg = ModelRegistry().get("nuclei-unet")
    with pytest.raises(InputError, match="not a detection model"):
        detect(scene(), seg)


# --- thresholds and the raw-box cache -------------------------------------------------------
def test_threshold_change_refilters_without_the_network():
    img = scene(boxes=((20, 30, 60, 90, "red"), (120, 200, 170, 260, "green")))
    img[20:60, 30:90] = (255, 255, 200)  # bright: score 0.93 (the blob's mean brightness)
    img[120:170, 200:260] = (0, 255, 200)  # dimmer: score 0.59
    det = blob_detector()
    hi = detect(img, det, score_thresh=0.7)
    calls = det.model.calls
    lo = detect(img, det, score_thresh=0.3)
    assert det.model.calls == calls  # cached raw boxes, no network call
    assert hi.n_objects == 1 and lo.n_objects == 2
    assert lo.score_thresh == 0.3


# --- tiling ------------------------------------------------------------------------------
def test_tile_grid_covers_the_image_with_the_overlap():
    assert axis_starts(100, 128, 32) == [0]
    s = axis_starts(300, 128, 32)
    assert s[0] == 0 and s[-1] == 300 - 128
    assert all(b - a <= 128 - 32 for a, b in zip(s, s[1:]))
    wins = tile_windows((300, 500), (128, 128), (32, 32))
    cover = np.zeros((300, 500), bool)
    for y0, x0, y1, x1 in wins:
        assert (y1 - y0, x1 - x0) == (128, 128)
        cover[y0:y1, x0:x1] = True
    assert cover.all()


def test_a_box_straddling_a_tile_border_is_found_once():
    """Tiles 128 wide overlapping by 48 start at x = 0, 80, 160: a blob at x 110..150 is cut by the
    first tile's right edge (x=128), held whole by the second tile. One box, as without tiling."""
    img = scene((128, 288), boxes=((40, 110, 80, 150, "red"), (10, 10, 30, 30, "green")))
    untiled = detect(img, blob_detector(), tile_size=0)
    # count the pieces the tiles see: the first tile's cut piece (x 110..128) is there, then dropped
    det = blob_detector((128, 128), overlap=48)
    seen = []

    def predict_batch(inputs):
        outs = P._predictor(det)(inputs)
        seen.extend(len(o[0]) for o in outs)
        return outs

    wins = tile_windows((128, 288), (128, 128), (48, 48))
    assert [w[1] for w in wins] == [0, 80, 160]
    boxes, _, _, n = detect_tiled(img, P._InputMaker(3, 3, 0.0, 1 / 255), predict_batch, (128, 128), (48, 48))
    # tile 0: the green blob and the red one's cut piece (x 110..128, IoU 0.45 with the whole box: NMS
    # alone would keep both); tile 1: the whole red blob; tile 2: nothing
    assert n == 3 and sum(seen) == 3 and len(boxes) == 2
    tiled = detect(img, blob_detector((128, 128), overlap=48))
    assert as_set(tiled) == as_set(untiled) == [((10, 10, 30, 30), "green"), ((40, 110, 80, 150), "red")]


def test_an_object_larger_than_the_overlap_is_not_lost():
    img = scene((128, 400), boxes=((30, 60, 90, 340, "red"),))  # 280 wide: no 128-px tile holds it
    res = detect(img, blob_detector((128, 128), overlap=32))
    assert res.n_objects >= 1
    cover = np.zeros(400, bool)
    for b in res.boxes:
        cover[int(b[1]):int(b[3])] = True
    assert cover[60:340].all()  # the pieces together still cover the object


def test_a_large_image_is_tiled_with_flat_memory():
    """2048 x 2048 RGB: the float copies made are one tile batch, not the image (48 MiB as float32)."""
    img = np.zeros((2048, 2048, 3), np.uint8)
    for k in range(8):
        img[100 + 230 * k:140 + 230 * k, 300 + 200 * k:350 + 200 * k] = 220
    det = blob_detector((256, 256), overlap=64)
    tracemalloc.start()
    try:
        res = detect(img, det)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.n_objects == 8
    full_float = img.size * 4
    assert peak < full_float / 3, f"peak {peak / 2**20:.1f} MiB"
    assert all(s[1:] == (256, 256) for s in det.model.inputs)


# --- stacks ------------------------------------------------------------------------------
def test_a_stack_gives_frame_indices_and_frames_can_be_chosen():
    frames = [scene(boxes=((20 + 30 * t, 30, 60 + 30 * t, 90, "red"),)) for t in range(3)]
    stack = np.stack(frames)
    res = detect(stack, blob_detector())
    assert res.has_frames and res.frame.tolist() == [0, 1, 2] and res.frames == [0, 1, 2]
    assert res.boxes[:, 0].tolist() == [20, 50, 80]
    some = detect(stack, blob_detector(), frames=[0, 2])
    assert some.frame.tolist() == [0, 2] and some.frames == [0, 2]
    from napari_cnnvision.layers.detection import detection_layers

    (rects, _, _), (pts, _, _) = detection_layers(res, "stack")
    assert np.asarray(rects).shape == (3, 4, 3) and np.asarray(rects)[:, 0, 0].tolist() == [0, 1, 2]
    zstack = detect(stack[..., 0], blob_detector(), axes="ZYX")  # gray Z stack, slice by slice
    assert zstack.frame.tolist() == [0, 1, 2]


# --- real networks: a tiny Faster R-CNN and the one-shot detector ----------------------------
def _frcnn(k=2):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=k + 1, min_size=128,
                                             max_size=128, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                                             box_detections_per_img=20)


def test_faster_rcnn_output_becomes_a_detection_result():
    det = Detector(_frcnn(), list(CLASSES), "tiny-frcnn", 3, (128, 128))
    img = (np.random.default_rng(0).random((128, 128)) * 65535).astype(np.uint16)  # 16-bit gray
    res = detect(img, det, score_thresh=0.0, nms_thresh=0.9)
    assert res.n_objects > 0  # an untrained network still proposes boxes at score 0
    assert set(res.class_ids.tolist()) <= {0, 1}
    b = res.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128).all()
    assert ((b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])).all()
    # the network ran with the raw thresholds; the result keeps the caller's
    assert det.model.roi_heads.score_thresh == 0.0 and res.score_thresh == 0.0


def _tiny_yolo_folder(tmp_path, name="tiny-yolo"):
    from napari_cnnvision.backends.detection.models import build_detector, save_detector

    cfg = {"arch": "yolo", "classes": list(CLASSES), "in_channels": 3, "input_size": 64, "widths": [8, 16, 32],
           "depths": [0, 0, 0], "stride": 4, "head_channels": 8, "score_thresh": 0.05, "nms_thresh": 0.5}
    torch.manual_seed(0)
    return save_detector(build_detector(cfg), cfg, tmp_path / name)


def test_model_folder_through_the_registry_and_a_corrupt_one(tmp_path):
    from napari_cnnvision.core.registry import CorruptModel, read_card

    folder = _tiny_yolo_folder(tmp_path)
    card = read_card(folder, "path")
    assert card.task == "detect" and card.backend == "yolo"
    res = detect(np.zeros((100, 150, 3), np.uint8), card, score_thresh=0.0)  # larger than 64: tiled
    assert res.model == "tiny-yolo" and res.class_names == CLASSES
    assert res.score_thresh == 0.0 and res.nms_thresh == 0.5  # NMS from the model's config
    (folder / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptModel):
        detect(np.zeros((64, 64, 3), np.uint8), read_card(folder, "path"))


def test_the_jobs_run_in_the_worker(pool, tmp_path, monkeypatch):
    """A model folder's job, and the pretrained COCO model offline: torchvision's own download runs in
    the worker and fails at a closed local port (the proxy the worker inherits) -> ModelUnavailable."""
    from napari_cnnvision.backends.dispatch import job_for, run_model
    from napari_cnnvision.core.progress import RecordingProgress
    from napari_cnnvision.core.registry import ModelRegistry, read_card
    from napari_cnnvision.worker.client import JobError

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # before the worker starts: it inherits them
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    card = read_card(_tiny_yolo_folder(tmp_path), "path")
    assert job_for(card, task="detect") == "yolo.predict"
    stack = np.zeros((2, 64, 80, 3), np.uint8)
    prog = RecordingProgress()
    res = run_model(stack, card, progress=prog, pool=pool, task="detect", score_thresh=0.2)
    assert res.has_frames and res.frames == [0, 1] and res.class_names == CLASSES
    assert set(res.frame.tolist()) <= {0, 1} and res.score_thresh == 0.2
    assert any("frame 2/2" in ev.message for ev in prog.events)
    with pytest.raises(JobError, match="channels"):
        run_model(np.zeros((64, 64, 2), np.uint8), card, pool=pool, task="detect")

    coco = ModelRegistry().get("fasterrcnn_resnet50_fpn_coco")
    assert job_for(coco, task="detect") == "fasterrcnn.predict"
    with pytest.raises(JobError, match="could not be downloaded") as ei:
        run_model(scene(), coco, pool=pool, task="detect")
    assert ei.value.kind == "ModelUnavailable" and "refused" in str(ei.value).lower()


# --- the pretrained COCO model, offline -----------------------------------------------------
def test_coco_pretrained_offline_is_a_clear_error(monkeypatch, tmp_path):
    """torchvision's own download runs; pointed at an unreachable address it becomes ModelUnavailable."""
    import torch.hub
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from napari_cnnvision.backends.stardist.predict import ModelUnavailable
    from napari_cnnvision.core.registry import ModelRegistry

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    tried = []
    real = torch.hub.download_url_to_file

    def unreachable(url, dst, *a, **k):
        tried.append(url)
        return real("http://127.0.0.1:9/x.pth", dst, *a, **k)

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    card = ModelRegistry().get("fasterrcnn_resnet50_fpn_coco")
    assert card.task == "detect" and card.source == "pretrained" and card.path is None
    P.clear_caches()
    with pytest.raises(ModelUnavailable, match="not in the local cache and could not be downloaded"):
        detect(scene(), card)
    assert tried == [FasterRCNN_ResNet50_FPN_Weights.DEFAULT.url]


def test_coco_pretrained_cached_but_damaged_is_a_corrupt_model(monkeypatch, tmp_path):
    import torch.hub
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from napari_cnnvision.core.registry import CorruptModel, ModelRegistry

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    f = tmp_path / "th" / "hub" / "checkpoints" / FasterRCNN_ResNet50_FPN_Weights.DEFAULT.url.rsplit("/", 1)[1]
    f.parent.mkdir(parents=True)
    f.write_bytes(b"truncated")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    card = ModelRegistry().get("fasterrcnn_resnet50_fpn_coco")
    assert card.path == str(f)  # the registry sees the cached file
    P.clear_caches()
    with pytest.raises(CorruptModel, match="delete the file"):
        detect(scene(), card)


# --- Python API and CLI --------------------------------------------------------------------
def test_api_detect(tmp_path):
    from napari_cnnvision import api

    res = api.detect(np.zeros((64, 64, 3), np.uint8), str(_tiny_yolo_folder(tmp_path)), score_thresh=0.9,
                     isolated=False)
    assert res.class_names == CLASSES and res.score_thresh == 0.9


def test_cli_detect_writes_csv_and_coco_and_skips_done_images(tmp_path, capsys, monkeypatch):
    import tifffile

    from napari_cnnvision import api
    from napari_cnnvision.cli.main import main
    from napari_cnnvision.core.formats import boxtable, coco

    monkeypatch.setattr(api, "_must_isolate", lambda job: False)  # pytest has Qt loaded; run here, as a shell would
    folder = _tiny_yolo_folder(tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(1)
    tifffile.imwrite(inp / "a.tif", (rng.random((64, 96, 3)) * 255).astype(np.uint8))
    tifffile.imwrite(inp / "b.tif", (rng.random((70, 64)) * 255).astype(np.uint8))
    (inp / "bad.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    rc = main(["detect", str(inp), "--out", str(out), "--model", str(folder), "--score-thresh", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.tif" in err  # reported; the batch went on
    d = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in d["images"]] == ["a.tif", "b.tif"]
    assert [(i["width"], i["height"]) for i in d["images"]] == [(96, 64), (64, 70)]
    assert d["categories"] == [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    rows = boxtable.read_rows(out / "a.csv")
    per = coco.per_image(d)
    n_a = len(rows["image"])
    assert len(per["a.tif"]["boxes"]) == n_a and n_a > 0
    # the CSV's xmin.. and COCO's [x, y, w, h] describe the same boxes
    np.testing.assert_allclose(per["a.tif"]["boxes"], rows["boxes"], atol=0.06)
    a0 = next(a for a in d["annotations"] if a["image_id"] == 1)
    assert set(a0) >= {"id", "image_id", "category_id", "bbox", "area", "score"}
    # a second run skips both images and keeps them in the COCO file
    rc = main(["detect", str(inp / "a.tif"), str(inp / "b.tif"), "--out", str(out), "--model", str(folder),
               "--quiet"])
    assert rc == 0 and "skipped 2" in capsys.readouterr().out
    assert len(json.loads((out / "detections.json").read_text())["images"]) == 2


def test_cli_refuses_an_out_that_would_overwrite_an_input(tmp_path, capsys):
    from napari_cnnvision.cli.main import main

    folder = _tiny_yolo_folder(tmp_path)
    inp = tmp_path / "in"
    inp.mkdir()
    victim = inp / "detections.json"
    victim.write_text("precious")
    # an input named like an output in the same folder
    rc = main(["detect", str(victim), "--out", str(inp), "--model", str(folder), "--quiet"])
    assert rc == 2 and "would overwrite the input" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    rc = main(["detect", str(inp), "--out", str(tmp_path / "o"), "--model", "nuclei-unet", "--quiet"])
    assert rc == 2 and "not a detect model" in capsys.readouterr().err and not (tmp_path / "o").exists()
