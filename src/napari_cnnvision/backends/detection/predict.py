"""Detection inference: any image in, a :class:`~napari_cnnvision.core.results.DetectionResult` out.

* **Channels**: grayscale is replicated to 3 channels for an RGB model, RGBA loses its alpha,
  an RGB image is averaged to gray for a 1-channel model (with a warning).
* **Intensities**: the card's normalization. ``{"type": "scale", "factor": 1/255}`` is the
  8-bit scaling the model was trained with; an image of more bits (16-bit, 12 bits used) is
  scaled by its own bit range instead, and a float image already in 0..1 is used as it is
  (each with a warning), so that every bit depth reaches the model in the range it knows.
  ``percentile`` maps the frame's percentiles to 0..1.
* **Size**: an image more than 25% larger than the model's input size (the card's
  ``input_size``) is tiled with overlap and the boxes merged (:mod:`.tiling`); memory stays
  flat in the image size (one batch of tiles is converted to float at a time).
* **Stacks / time-lapses** (axes ``TYX[C]`` or ``ZYX[C]``) run frame by frame; each box
  carries its ``frame``.
* **Thresholds**: the network runs once at a low score threshold (:data:`RAW_SCORE`) and a
  loose NMS (:data:`RAW_NMS`); those raw boxes are cached per frame, so a new score or NMS
  threshold only re-filters them (score filter + class-wise NMS), without the network.

PyTorch is imported inside the functions (this module runs in the torch compute worker or
in the CLI's process).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.axes import InputError, check_axes, check_image, guess_axes
from ...core.cache import LRUCache
from ...core.formats import boxes_from_xyxy
from ...core.normalize import resolve_normalization
from ...core.progress import NULL_PROGRESS, Progress
from ...core.registry import CorruptModel, ModelCard, ModelNotFound, ModelRegistry
from ...core.results import DetectionResult
from ..common import image_key, model_job
from ..frames import frame_indices, run_frames
from . import tiling
from .thresholds import DEFAULTS, read_thresholds

RAW_SCORE = 0.05  # the network's own score threshold; lower requested thresholds go lower
RAW_NMS = 0.7  # the network's own NMS; stricter requested ones are applied afterwards
DEFAULT_BATCH = 4  # tiles per network call
TILE_SLACK = 1.25  # an image up to this factor larger than the input size runs whole
SAMPLE_PIXELS = 4_000_000  # percentiles of larger frames come from a regular subsample
COCO_NAME = "fasterrcnn_resnet50_fpn_coco"
_MODELS = LRUCache(2)
_RAW = LRUCache(64)  # raw (pre-threshold) boxes per frame


@dataclass
class Detector:
    """A loaded detection network with what inference needs to know about it.

    ``model`` follows torchvision's detection convention: in eval mode
    ``model(list of (C, H, W) float tensors)`` returns per image a dict with ``boxes``
    ``(n, 4)`` x0, y0, x1, y1 pixels, ``labels`` 1..K (0 = background) and ``scores``.
    """

    model: object
    classes: list[str]
    name: str = "detector"
    in_channels: int = 3
    input_size: tuple[int, int] | None = None
    normalization: dict = field(default_factory=lambda: {"type": "scale", "factor": 1 / 255})
    thresholds: dict = field(default_factory=lambda: dict(DEFAULTS))
    tile_overlap: int | None = None
    key: object = None  # identity for the raw-box cache (None: this object)


# --- loading -------------------------------------------------------------------------------
def _size2(v) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v), int(v)
    v = [int(x) for x in v]
    if len(v) != 2 or min(v) < 1:
        raise CorruptModel(f"input_size must be a number or [height, width], got {v}")
    return v[0], v[1]


def _stamp(path: str | None):
    """Modification times of a model folder's files: a retrained model is reloaded."""
    if not path or not os.path.exists(path):
        return None
    p = Path(path)
    files = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.is_file())
    return tuple((q.name, q.stat().st_mtime_ns) for q in files)


def load_pretrained_coco(name: str = COCO_NAME) -> Detector:
    """torchvision's COCO Faster R-CNN (ResNet50-FPN) through torchvision's own download and
    cache (``TORCH_HOME``); offline and not cached is a clear
    :class:`~napari_cnnvision.core.registry.ModelUnavailable`."""
    import socket

    import torch
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

    from ...core.registry import DOWNLOAD_TIMEOUT_S, ModelUnavailable

    weights = FasterRCNN_ResNet50_FPN_Weights.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    was_cached = cached.is_file()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        model = fasterrcnn_resnet50_fpn(weights=weights, progress=False)
    except Exception as exc:  # URLError, socket errors, a truncated file ...
        if was_cached:
            raise CorruptModel(f"the cached COCO weights {cached} cannot be loaded ({type(exc).__name__}: {exc}); "
                               "delete the file and torchvision downloads it again") from exc
        raise ModelUnavailable(
            f"torchvision's COCO weights for {name!r} are not in the local cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Connect to the internet once to fetch them (torchvision caches them "
            "afterwards), or use a shipped detector such as 'bloodcells-yolo'.") from exc
    finally:
        socket.setdefaulttimeout(old)
    return Detector(model, list(weights.meta["categories"])[1:], name, 3, None,
                    {"type": "scale", "factor": 1 / 255}, {"score": 0.5, "nms": 0.5})


def _load(card: ModelCard) -> Detector:
    if card.source == "pretrained" and card.backend == "fasterrcnn":
        det = load_pretrained_coco(card.name)
        det.thresholds = read_thresholds(card)
        return det
    if not card.path or not Path(card.path).is_dir():
        raise ModelNotFound(f"the detection model {card.name!r} has no folder ({card.path})")
    from .models import load_detector

    try:
        model, config = load_detector(card.path)
    except (CorruptModel, ModelNotFound):
        raise
    except Exception as exc:  # a truncated or foreign weights file, a bad config ...
        raise CorruptModel(f"cannot load the detection model in {card.path}: {type(exc).__name__}: {exc}") from exc
    classes = list(config.get("classes") or card.classes)
    if not classes:
        raise CorruptModel(f"the detection model {card.name!r} names no classes")
    return Detector(model, classes, card.name, int(config.get("in_channels", card.channels or 3)),
                    _size2(config.get("input_size")), dict(card.normalization or {}), read_thresholds(card),
                    config.get("tile_overlap"))


def load(card: ModelCard) -> Detector:
    """The detector of ``card``, from a small cache (reloaded when its files change)."""
    key = (card.source, card.path or card.name, _stamp(card.path))
    det, _ = _MODELS.get_or_make(key, lambda: _load(card))
    if det.key is None:
        det.key = key
    return det


def _device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        import torch

        return torch.device("cpu")


def _ready(model):
    """Eval mode, on the GPU when there is one."""
    import torch

    if torch.cuda.is_available() and hasattr(model, "to") and _device(model).type != "cuda":
        model.to("cuda")
    model.eval()
    return model


def set_raw_thresholds(model, score: float, nms: float) -> None:
    """Set the network's own score / NMS thresholds (:func:`.models.set_thresholds`); a model
    without them (a test double) is left as it is."""
    from .models import set_thresholds

    if hasattr(model, "roi_heads") or hasattr(model, "score_thresh"):
        set_thresholds(model, score, nms)


# --- input ---------------------------------------------------------------------------------
_AXES = {"YX", "YXC", "TYX", "TYXC", "ZYX", "ZYXC"}


def prepare(image, axes: str | None):
    """Check ``image``: ``(image, axes, loop_axis ('' / 'T' / 'Z'), n_channels)``."""
    image = check_image(image)
    if axes:
        axes = check_axes(axes, image.shape)
    else:
        rgb = image.ndim >= 3 and image.shape[-1] in (2, 3, 4) and image.shape[-2] > 4
        axes = guess_axes(image.shape, 2, rgb=rgb)
    if axes not in _AXES:
        raise InputError(f"detection runs on 2D images, one frame at a time; axes {axes!r} are not supported "
                         f"(use one of {sorted(_AXES)})")
    loop = axes[0] if axes[0] in "TZ" else ""
    n_ch = image.shape[-1] if axes.endswith("C") else 1
    if n_ch not in (1, 3, 4):
        raise InputError(f"the image has {n_ch} channels; detection takes grayscale (1), RGB (3) or RGBA (4)")
    spatial = image.shape[len(loop):len(loop) + 2]
    if min(spatial) < 8:
        raise InputError(f"the image ({spatial[1]}x{spatial[0]} pixels) is too small to detect objects in: "
                         "each side needs at least 8 pixels")
    return image, axes, loop, n_ch


def _scale_factor(image: np.ndarray, factor: float, warnings_: list[str]) -> float:
    """The card's scale factor, adapted to the image's bit depth (see the module docstring)."""
    full = 1.0 / factor  # the value that maps to 1 (255 for an 8-bit model)
    if np.issubdtype(image.dtype, np.floating):
        vmax = float(np.nanmax(image)) if np.isfinite(image).any() else 0.0
        vmin = float(np.nanmin(image)) if np.isfinite(image).any() else 0.0
        if full > 1 and vmax <= 1.0 and vmin >= 0.0:
            warnings_.append("a float image in 0..1 was used as it is (not scaled like the model's 8-bit data)")
            return 1.0
        if vmax > full:
            warnings_.append(f"a float image up to {vmax:g} was scaled to 0..1 by its maximum")
            return 1.0 / vmax
        return factor
    vmax = int(image.max())
    if vmax <= full:
        return factor
    bits = max(1, math.ceil(math.log2(vmax + 1)))
    warnings_.append(f"a {image.dtype.itemsize * 8}-bit image ({bits} bits used) was scaled by 1/{2 ** bits - 1} "
                     f"to the 0..1 range the model was trained on")
    return 1.0 / (2 ** bits - 1)


def _percentiles(frame: np.ndarray, pmin: float, pmax: float) -> tuple[float, float]:
    step = max(1, int(math.sqrt(frame.shape[0] * frame.shape[1] / SAMPLE_PIXELS)))
    sample = frame[::step, ::step]
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
        if not sample.size:
            return 0.0, 1.0
    lo, hi = np.percentile(sample, [pmin, pmax])
    return float(lo), float(hi)


class _InputMaker:
    """Crop (H, W[, C], any dtype) -> normalized float32 (C, H, W) for the network."""

    def __init__(self, n_ch: int, want: int, offset: float, scale: float):
        self.n_ch, self.want, self.offset, self.scale = n_ch, want, offset, scale

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        if self.n_ch == 4:
            crop = crop[..., :3]
        x = crop.astype(np.float32)
        if np.issubdtype(crop.dtype, np.floating):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x = (x - np.float32(self.offset)) * np.float32(self.scale)
        x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)
        if x.shape[0] != self.want:
            x = np.repeat(x, self.want, axis=0) if x.shape[0] == 1 else x.mean(axis=0, keepdims=True)
        return np.ascontiguousarray(x)


def _predictor(det: Detector):
    import torch

    model, k = det.model, len(det.classes)

    def predict_batch(inputs: list[np.ndarray]):
        dev = _device(model)
        with torch.inference_mode():
            outs = model([torch.from_numpy(x).to(dev) for x in inputs])
        res = []
        for o in outs:
            labels = o["labels"].cpu().numpy().astype(np.int64)
            ok = (labels >= 1) & (labels <= k)
            res.append((boxes_from_xyxy(o["boxes"].float().cpu().numpy()[ok]), labels[ok] - 1,
                        o["scores"].float().cpu().numpy()[ok]))
        return res

    return predict_batch


def tile_plan(shape: tuple[int, int], det: Detector, tile_size=None, tile_overlap=None):
    """``(tile (h, w) or None, overlap (h, w))`` for a frame of ``shape``.

    ``tile_size``: ``None`` = the model's input size (tiling only above :data:`TILE_SLACK` x
    it), ``0`` = never tile, a number or (h, w) = tiles of that size whenever larger."""
    if tile_size == 0 or tile_size is False:
        return None, (0, 0)
    size, slack = (det.input_size, TILE_SLACK) if tile_size is None else (_size2(tile_size), 1.0)
    if size is None or (shape[0] <= size[0] * slack and shape[1] <= size[1] * slack):
        return None, (0, 0)
    size = (min(size[0], shape[0]), min(size[1], shape[1]))
    ov = tile_overlap if tile_overlap is not None else det.tile_overlap
    ov = (max(32, size[0] // 3), max(32, size[1] // 3)) if ov is None else _size2(ov) if ov else (0, 0)
    return size, (min(ov[0], size[0] - 1), min(ov[1], size[1] - 1))


# --- inference -----------------------------------------------------------------------------
def _threshold(v, default, what):
    v = float(default if v is None else v)
    if not 0.0 <= v <= 1.0:
        raise InputError(f"the {what} threshold must lie between 0 and 1, got {v}")
    return v


def detect(image, card, axes: str | None = None, score_thresh: float | None = None,
           nms_thresh: float | None = None, frames=None, tile_size=None, tile_overlap=None,
           batch_size: int = DEFAULT_BATCH, progress: Progress = NULL_PROGRESS,
           registry: ModelRegistry | None = None) -> DetectionResult:
    """Detect objects in ``image`` with ``card`` (a :class:`ModelCard`, registry name / folder
    path, or a loaded :class:`Detector`); see the module docstring.

    ``score_thresh`` / ``nms_thresh`` default to the model's (``thresholds.json``);
    ``frames`` restricts a stack to those frame indices; ``tile_size`` / ``tile_overlap``
    override the tiling (:func:`tile_plan`).
    """
    t0 = time.perf_counter()
    if isinstance(card, str):
        card = (registry or ModelRegistry()).get(card)
    if isinstance(card, ModelCard):
        if card.task != "detect":
            raise InputError(f"model {card.name!r} is a {card.task} model, not a detection model")
        progress(0.0, f"loading model {card.name}")
        det = load(card)
    elif isinstance(card, Detector):
        det = card
    else:
        raise TypeError(f"expected a model card, name or Detector, got {type(card).__name__}")
    score = _threshold(score_thresh, det.thresholds.get("score", DEFAULTS["score"]), "score")
    nms = _threshold(nms_thresh, det.thresholds.get("nms", DEFAULTS["nms"]), "NMS (IoU)")
    image, axes, loop, n_ch = prepare(image, axes)
    warnings_: list[str] = []
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        warnings_.append(f"{int((~np.isfinite(image)).sum())} NaN/inf pixel values were set to 0")
    if n_ch == 4:
        warnings_.append("the alpha channel of the RGBA image was ignored")
    if det.in_channels == 1 and n_ch > 1:
        warnings_.append(f"{det.name!r} is a grayscale model: the colour image was averaged to gray")
    norm = resolve_normalization(det.normalization, model=det.name)
    norm.pop("source", None)
    factor = _scale_factor(image, norm["factor"], warnings_) if norm["type"] == "scale" else None
    model = _ready(det.model)
    raw_score, raw_nms = min(RAW_SCORE, score), max(RAW_NMS, nms)
    set_raw_thresholds(model, raw_score, raw_nms)
    predict_batch = _predictor(det)
    n_frames = image.shape[0] if loop else 1
    indices = frame_indices((n_frames,) if loop else (), frames)
    timings: dict[str, float] = {}
    used_norm = {**norm, **({"factor": factor} if factor is not None else {})}

    def per_frame(step):
        frame = image[step.index] if loop else image
        if factor is not None:
            offset, scale = 0.0, factor
        else:
            lo, hi = _percentiles(frame[..., :3] if n_ch == 4 else frame, norm["pmin"], norm["pmax"])
            offset, scale = lo, 1.0 / max(hi - lo, 1e-20)
        tile, overlap = tile_plan(frame.shape[:2], det, tile_size, tile_overlap)
        key = (det.key if det.key is not None else id(det), image_key(frame), n_ch, offset, scale, tile, overlap,
               raw_score, raw_nms, batch_size)
        raw = _RAW.get(key)
        if raw is None:
            with step.timed("network_s"):
                raw = tiling.detect_tiled(frame, _InputMaker(n_ch, det.in_channels, offset, scale), predict_batch,
                                          tile, overlap, batch_size, tile_done=step.tile)
            _RAW.put(key, raw)
        else:
            step.notes.append("(cached network output)")
        b, c, s, n_tiles = raw
        with step.timed("postprocess_s"):
            sel = np.flatnonzero(s >= score)
            keep = sel[tiling.class_nms(b[sel], c[sel], s[sel], nms)]
        if n_tiles > 1:
            step.notes.append(f"{n_tiles} tiles")
        f = step.index[0] if loop else 0
        return b[keep], c[keep], s[keep], np.full(len(keep), f, np.int64)

    def describe(out):
        return f"{len(out[0])} objects"

    outs = run_frames(indices, per_frame, progress, describe, label="frame", timings=timings)
    boxes = np.concatenate([o[0] for o in outs]) if outs else np.zeros((0, 4))
    ids = np.concatenate([o[1] for o in outs]) if outs else np.zeros(0, np.int64)
    scores = np.concatenate([o[2] for o in outs]) if outs else np.zeros(0)
    frame = np.concatenate([o[3] for o in outs]) if outs else np.zeros(0, np.int64)
    timings["total_s"] = time.perf_counter() - t0
    shape = image.shape[len(loop):len(loop) + 2]
    return DetectionResult(boxes, ids, scores, list(det.classes), det.name, shape, frame, bool(loop), score, nms,
                           warnings_, timings, used_norm, [i[0] for i in indices] if loop else None)


predict_job = model_job(detect)


def clear_caches() -> None:
    _MODELS.clear()
    _RAW.clear()


__all__ = ["detect", "predict_job", "Detector", "load", "load_pretrained_coco", "prepare", "tile_plan",
           "set_raw_thresholds", "clear_caches", "RAW_SCORE", "RAW_NMS"]
