"""Run a bioimage.io model package on an image: the package's own pre- and post-processing
(``bioimageio.core``'s operators, applied to the whole frame, so sample statistics such as
``zero_mean_unit_variance`` see the whole image), its weights through ``bioimageio.core``'s
model adapters (TorchScript / PyTorch state dict in the torch worker, ONNX via onnxruntime),
tiled with the package's input sizes and output halo; the probability maps then become
instances by the plugin's own seeded watershed (:func:`~..unet.targets.instances_from_probs`).

Tiling: an image that fits one valid input (a fixed size, or ``min + k * step``) with the
output ``halo`` of mirrored context on each side (as far as a fixed size allows) runs in one
call, mirrored up to that size; a larger one is cut into windows of a valid size that overlap
by the output ``halo`` (or ``tile_overlap``, if larger) on each side, and only the centre of each
window is kept. ``bioimageio.core``, ``torch`` and ``onnxruntime`` are imported inside the functions.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.cache import LRUCache
from ...core.progress import NULL_PROGRESS, Progress
from ...core.registry import CorruptModel, ModelCard, ModelRegistry
from ...core.results import SegmentationResult
from ..common import FrameSegmentation, assemble_segmentation, describe_frame, image_key, model_job, prepare_input
from ..frames import run_frames
from ..unet.predict import _polygons, _reflect_index
from ..unet.targets import INTERIOR, instances_from_probs, object_probabilities
from .package import BACKEND, TF_RUNNABLE, load_package, mapping, verified_weights

DEFAULT_TILE = 512
DEFAULTS = {"prob": 0.5, "seed": 0.5, "fg": 0.5, "min_size": 8}
#: a foreground map alone has no boundaries between touching objects: seeds only where it is sure
FOREGROUND_ONLY_SEED = 0.9
_PIPES = LRUCache(2)  # (package, weights format, device, file times) -> (pipeline, adapter)
_RAW = LRUCache(2)  # (package, format, frame, tiling) -> probabilities (C, H, W)


def thresholds_of(card: ModelCard) -> dict:
    """The watershed thresholds (``prob`` = seed) of a package: the defaults, or the card's
    ``extra["thresholds"]``. ``prob`` is the seed threshold (the name the segment widget uses);
    a package with a single foreground output gets seeds at 0.9. No framework import."""
    outputs = (card.extra.get("bioimageio") or {}).get("outputs") or []
    base = dict(DEFAULTS)
    if len(outputs) <= 1:
        base["prob"] = base["seed"] = FOREGROUND_ONLY_SEED
    thr = {**base, **(card.extra.get("thresholds") or {})}
    thr["prob"] = thr["seed"]
    return thr


def _device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _stamp(path: str) -> int:
    p = Path(path)
    files = [p] + (sorted(p.iterdir()) if p.is_dir() else [])
    return hash(tuple(f.stat().st_mtime_ns for f in files))


def load_pipeline(path: str, weights: str | None = None, device: str | None = None, roles: bool = True):
    """``(description, mapping, weights format, pipeline, adapter, warnings)`` of a package, cached;
    the weights file's sha256 is checked before each (re)load. ``roles``: see :func:`.package.mapping`."""
    descr, warnings_ = load_package(path)
    m = mapping(descr, str(path), roles)
    fmt = verified_weights(descr, weights, str(path))
    keras = fmt in TF_RUNNABLE  # Keras in this (TensorFlow) process; no torch import for the device
    if keras and "torch" in sys.modules:  # TensorFlow beside PyTorch can crash the process
        raise CorruptModel(f"{path} has weights in {fmt} format; this plugin runs torchscript, pytorch_state_dict, "
                           f"onnx here and {fmt} only in the TensorFlow worker (PyTorch is loaded in this process)")
    device = "cpu" if keras else (device or _device())

    def make():
        if keras:
            from bioimageio.core._settings import settings

            settings.keras_backend = "tensorflow"  # its default is torch: never beside TensorFlow
        from bioimageio.core import create_prediction_pipeline
        from bioimageio.core.backends import create_model_adapter

        devices = None if keras else [device]
        try:
            adapter = create_model_adapter(descr, devices=devices, weight_format_priority_order=[fmt])
            pipe = create_prediction_pipeline(descr, devices=devices, weight_format=fmt, model_adapter=adapter)
        except Exception as exc:  # noqa: BLE001 -- any loader failure is a damaged / unusable package
            raise CorruptModel(f"{path}: cannot load the {fmt} weights: {str(exc).splitlines()[0][:300]}") from exc
        return pipe, adapter

    (pipe, adapter), _ = _PIPES.get_or_make((str(Path(path).resolve()), fmt, device, _stamp(path)), make)
    return descr, m, fmt, pipe, adapter, list(warnings_)


def _valid_size(target: int, lo: int, step: int) -> int:
    """The smallest valid input size >= ``target`` (``step`` 0: the fixed size ``lo``)."""
    if step == 0:
        return lo
    return lo + max(0, math.ceil((target - lo) / step)) * step


def _axis_tiles(n: int, lo: int, step: int, margin: int, tile: int | None, count: int | None):
    """(window, margin, block starts, block size) along one axis."""
    if count is None:  # one window when it fits: the image plus mirrored context of the halo
        if step == 0 and n <= lo:
            return lo, min(margin, (lo - n) // 2), [0], n
        if step and (tile is None or n + 2 * margin <= tile):
            return _valid_size(n + 2 * margin, lo, step), margin, [0], n
    target = (math.ceil(n / count) + 2 * margin) if count else int(tile or DEFAULT_TILE)
    w = _valid_size(max(target, 2 * margin + 1), lo, step)
    core = w - 2 * margin
    if core < 1:
        raise InputError(f"the model's input size {w} is too small for an overlap of {margin} pixels per side")
    starts = list(range(0, n, core))
    return w, margin, starts, core


def _forward(adapter, m, x: np.ndarray) -> np.ndarray:
    """One model call on ``x`` (in the input's axis order) -> output array in the output's axis order."""
    from bioimageio.core import Tensor

    out = adapter.forward({m.input_id: Tensor.from_numpy(x, dims=m.input_axes)})[m.output_id]
    return np.asarray(out.data.transpose(*m.output_axes).values, np.float32)


def predict_maps(pipe, adapter, m, frame: np.ndarray, tile_size=None, tile_overlap=None, n_tiles=None,
                 tile_done=None, context: bool = True) -> np.ndarray:
    """Post-processed output channels ``(C_out, H, W)`` of one ``(C, H, W)`` frame.
    ``context=False``: no mirrored halo around a frame that is run in one call (a frame of a
    valid size then goes through the network as it is, as in bioimage.io's own test)."""
    from bioimageio.core import Sample, Tensor

    c, h, w = frame.shape
    arr, dims = frame, ["channel", "y", "x"]
    if "channel" not in m.input_axes:
        arr, dims = arr[0], ["y", "x"]
    if "batch" in m.input_axes:
        arr, dims = arr[None], ["batch"] + dims
    arr = np.ascontiguousarray(np.transpose(arr, [dims.index(a) for a in m.input_axes]))
    sample = Sample(members={m.input_id: Tensor.from_numpy(arr, dims=m.input_axes)}, stat={}, id="frame")
    pipe.apply_preprocessing(sample)
    xin = np.asarray(sample.members[m.input_id].data.transpose(*m.input_axes).values)
    yi, xi = m.input_axes.index("y"), m.input_axes.index("x")
    extra = max(0, int(tile_overlap or 0))
    plans = []
    for ax, n in (("y", h), ("x", w)):
        lo, step = m.window[ax]
        count = None if n_tiles is None else int(n_tiles[0 if ax == "y" else 1])
        margin = max(m.halo.get(ax, 0), extra) if context else extra
        plans.append(_axis_tiles(n, lo, step, margin, tile_size, count))
    (wy, my, sy, cy), (wx, mx, sx, cx) = plans
    out = None
    blocks = [(y0, x0) for y0 in sy for x0 in sx]
    for k, (y0, x0) in enumerate(blocks):
        iy = _reflect_index(np.arange(y0 - my, y0 - my + wy), h)
        ix = _reflect_index(np.arange(x0 - mx, x0 - mx + wx), w)
        win = np.take(np.take(xin, iy, axis=yi), ix, axis=xi)
        res = _forward(adapter, m, np.ascontiguousarray(win))
        oy, ox = m.output_axes.index("y"), m.output_axes.index("x")
        if out is None:
            shape = list(res.shape)
            shape[oy], shape[ox] = h, w
            out = np.zeros(shape, np.float32)
        bh, bw = min(cy, h - y0), min(cx, w - x0)
        sl_src = [slice(None)] * res.ndim
        sl_src[oy], sl_src[ox] = slice(my, my + bh), slice(mx, mx + bw)
        sl_dst = [slice(None)] * res.ndim
        sl_dst[oy], sl_dst[ox] = slice(y0, y0 + bh), slice(x0, x0 + bw)
        out[tuple(sl_dst)] = res[tuple(sl_src)]
        if tile_done is not None:
            tile_done(k + 1, len(blocks))
    res_sample = Sample(members={m.output_id: Tensor.from_numpy(out, dims=m.output_axes)}, stat=sample.stat,
                        id="frame")
    pipe.apply_postprocessing(res_sample)
    y = res_sample.members[m.output_id].data
    dims = [a for a in ("channel", "y", "x") if a in m.output_axes]
    y = y.isel(batch=0) if "batch" in m.output_axes else y
    y = np.asarray(y.transpose(*dims).values, np.float32)
    return y if "channel" in dims else y[None]


def class_probs(maps: np.ndarray, roles: list[str]) -> np.ndarray:
    """Output channels with roles -> ``(3, H, W)`` background / interior / boundary probabilities."""
    fg = maps[roles.index("foreground")]
    bd = maps[roles.index("boundary")] if "boundary" in roles else np.zeros_like(fg)
    interior = fg if "background" in roles else np.clip(fg - bd, 0.0, 1.0)
    return np.stack([np.clip(1.0 - interior - bd, 0.0, 1.0), interior, bd]).astype(np.float32)


def segment(
    image: np.ndarray,
    card: ModelCard | str,
    axes: str | None = None,
    prob_thresh: float | None = None,
    nms_thresh: float | None = None,
    pmin: float | None = None,
    pmax: float | None = None,
    n_tiles: tuple[int, ...] | str | None = "auto",
    frames: list[int] | None = None,
    return_polygons: bool = False,
    progress: Progress = NULL_PROGRESS,
    registry: ModelRegistry | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    tta: bool = False,
    stitch_z: bool = False,
    fg_thresh: float | None = None,
    min_size: int | None = None,
    weights: str | None = None,
) -> SegmentationResult:
    """Segment ``image`` with a bioimage.io model package; see :class:`SegmentationResult`.

    ``prob_thresh``: the watershed seed threshold on the (interior) foreground probability,
    ``fg_thresh``: the foreground mask threshold, ``min_size``: the smallest seed (pixels);
    defaults from :func:`thresholds_of`; ``nms_thresh`` has no meaning for a watershed and is
    ignored (as for the U-Net). The package's own preprocessing replaces the plugin's
    normalization (``pmin``/``pmax`` are ignored, with a warning). ``weights``: a weights format
    (default: the first of torchscript, pytorch_state_dict, onnx the package has as a file; a package
    with Keras weights only: keras_hdf5, run by the ``bioimageio.predict_tf`` job in the TensorFlow worker).
    ``n_tiles``: ``"auto"`` windows of about ``tile_size`` (default 512) pixels, ``None`` the
    whole image in one call where the model allows it, or a tile count per axis (Y, X).
    """
    t0 = time.perf_counter()
    if isinstance(card, str):
        card = (registry or ModelRegistry()).get(card)
    if card.backend != BACKEND:
        raise InputError(f"model {card.name!r} is a {card.backend} model, not a bioimage.io package")
    if not card.path:
        raise CorruptModel(f"the bioimage.io model {card.name!r} has no package path")
    progress(0.0, f"loading model {card.name}")
    descr, m, fmt, pipe, adapter, notes = load_pipeline(card.path, weights)
    inp = prepare_input(image, axes, card.name, 2, m.in_channels)
    if pmin is not None or pmax is not None:
        notes.append("pmin/pmax were ignored: a bioimage.io package normalizes with its own preprocessing")
    if tta:
        notes.append("tta was ignored: test-time augmentation is not available for bioimage.io packages")
    thr = thresholds_of(card)
    seed = float(thr["seed"] if prob_thresh is None else prob_thresh)
    fg = float(thr["fg"] if fg_thresh is None else fg_thresh)
    if not (0.0 < seed < 1.0 and 0.0 < fg < 1.0):
        raise InputError(f"the seed and foreground thresholds must lie between 0 and 1, got {seed}, {fg}")
    small = int(thr["min_size"] if min_size is None else min_size)
    if isinstance(n_tiles, str):
        if n_tiles != "auto":
            raise InputError(f"n_tiles must be 'auto', None or a tuple, not {n_tiles!r}")
        tile, counts = int(tile_size or DEFAULT_TILE), None
    elif n_tiles is None:
        tile, counts = (int(tile_size) if tile_size else None), None
    else:
        counts = tuple(int(t) for t in n_tiles)
        if len(counts) != 2 or min(counts) < 1:
            raise InputError(f"n_tiles needs 2 positive numbers (Y, X) for a 2D model, got {counts}")
        tile = None
    key0 = (str(Path(card.path).resolve()), fmt)

    def one_frame(step) -> FrameSegmentation:
        with step.timed("network_s"):
            x = np.asarray(inp.image[step.index], np.float32)
            x = np.moveaxis(x, -1, 0) if inp.has_c else x[None]
            x = np.nan_to_num(x)

            def run():
                if float(x.max()) == float(x.min()):
                    return None
                return predict_maps(pipe, adapter, m, x, tile, tile_overlap, counts, step.tile)

            maps, cached = _RAW.get_or_make(key0 + (image_key(x), tile, counts, tile_overlap), run)
        with step.timed("watershed_s"):
            if maps is None:
                return FrameSegmentation(np.zeros(x.shape[1:], np.int32), np.zeros(0),
                                         [] if return_polygons else None, cached, constant=True)
            probs = class_probs(maps, m.roles)
            labels = instances_from_probs(probs, seed_thresh=seed, fg_thresh=fg, min_size=small)
            obj_p = object_probabilities(labels, probs[INTERIOR])
        return FrameSegmentation(labels, obj_p, _polygons(labels) if return_polygons else None, cached)

    indices = inp.indices(frames)
    timings: dict[str, float] = {"network_s": 0.0, "watershed_s": 0.0}
    outs = run_frames(indices, one_frame, progress, describe_frame, "slice" if inp.slice_wise else "frame", timings)
    labels_out, table, polygons, more = assemble_segmentation(inp, indices, outs, return_polygons, stitch_z,
                                                              model_name=card.name)
    timings["total_s"] = time.perf_counter() - t0
    norm = {"type": "bioimageio", "weights": fmt, "source": "package"}
    return SegmentationResult(labels_out, table, card.name, seed, None, polygons, inp.warnings + notes + more,
                              timings, False, norm, inp.processed(indices))


predict_job = model_job(segment)

__all__ = ["segment", "predict_maps", "class_probs", "load_pipeline", "thresholds_of", "predict_job"]
