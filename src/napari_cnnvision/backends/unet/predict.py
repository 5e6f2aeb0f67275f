"""U-Net inference: tiled with overlap, then a seeded watershed per frame.

Tiling: the image is cut into fixed-size tiles (a multiple of ``2 ** depth``); each tile
reads ``overlap`` extra pixels of context on every side (mirrored at the image border)
and only its centre is kept. Tile origins stay on the pooling grid, so every pixel sees
the same context as in an untiled run as long as ``overlap`` covers the network's
effective receptive field; the peak memory of the network is set by the tile size, not
by the image size. The probabilities of the last images are cached, so changing a
threshold only re-runs the watershed.

PyTorch is imported inside the functions.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ...core.axes import InputError
from ...core.cache import LRUCache
from ...core.normalize import resolve_normalization
from ...core.progress import NULL_PROGRESS, Progress
from ...core.registry import CorruptModel, ModelCard, ModelRegistry
from ...core.results import SegmentationResult
from ..common import FrameSegmentation, assemble_segmentation, describe_frame, image_key, model_job, prepare_input
from ..frames import run_frames
from .targets import INTERIOR, instances_from_probs, object_probabilities

DEFAULT_TILE = 512
_RAW = LRUCache(2)  # (model, normalized frame, tiling, tta) -> class probabilities (None: constant frame)


def default_overlap(depth: int) -> int:
    """Context kept around each tile: 8 pixels per pooling level, at least 32."""
    return max(32, 8 * 2 ** depth)


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map indices outside 0..n-1 into it by mirroring (``np.pad`` 'reflect' mode)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    i = np.abs(idx) % period
    return np.where(i >= n, period - i, i)


def _axis_plan(n: int, m: int, margin: int, tile: int | None, count: int | None):
    """(core, window) sizes along one axis; core = part of each tile that is kept."""
    if count is not None:
        core = _round_up(math.ceil(n / count), m)
    elif tile is None:
        core = _round_up(n, m)
    else:
        window = min(_round_up(tile, m), _round_up(n + 2 * margin, m))
        if window - 2 * margin < m:
            raise InputError(f"tile size {tile} is too small for an overlap of {margin} pixels "
                             f"(needs at least {2 * margin + m})")
        # as few tiles as the size allows, then share the image evenly between them
        count = math.ceil(n / (window - 2 * margin))
        core = _round_up(math.ceil(n / count), m)
    return core, core + 2 * margin


def tile_plan(shape: tuple[int, int], depth: int, tile_size: int | None = DEFAULT_TILE,
              overlap: int | None = None, n_tiles: tuple[int, int] | None = None):
    """Tiles for a ``shape`` image: list of (y0, x0, h, w) output blocks, window size, margin."""
    m = 2 ** depth
    margin = _round_up(default_overlap(depth) if overlap is None else max(0, int(overlap)), m)
    plans = [_axis_plan(n, m, margin, tile_size, None if n_tiles is None else n_tiles[i])
             for i, n in enumerate(shape)]
    blocks = [(y, x, min(plans[0][0], shape[0] - y), min(plans[1][0], shape[1] - x))
              for y in range(0, shape[0], plans[0][0]) for x in range(0, shape[1], plans[1][0])]
    return blocks, (plans[0][1], plans[1][1]), margin


def _device(model):
    return next(model.parameters()).device


def _to_best_device(model):
    """Move a (cached) model to the GPU when there is one."""
    import torch

    if torch.cuda.is_available() and _device(model).type != "cuda":
        model.to("cuda")
    return model


def predict_probs(
    model,
    x: np.ndarray,
    tile_size: int | None = DEFAULT_TILE,
    overlap: int | None = None,
    n_tiles: tuple[int, int] | None = None,
    tile_done=None,
) -> np.ndarray:
    """Class probabilities ``(n_classes, H, W)`` float32 of a normalized ``(C, H, W)`` image.

    ``tile_size=None`` (and no ``n_tiles``) runs the whole (padded) image at once;
    ``n_tiles`` gives a tile count per axis instead of a tile size.
    """
    import torch

    x = np.asarray(x, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {x.shape}")
    cfg = model.config
    if x.shape[0] != cfg.in_channels:
        raise InputError(f"the U-Net expects {cfg.in_channels} channel(s), got {x.shape[0]}")
    h, w = x.shape[1:]
    blocks, (wy, wx), margin = tile_plan((h, w), cfg.depth, tile_size, overlap, n_tiles)
    out = np.empty((cfg.n_classes, h, w), np.float32)
    dev = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for k, (y0, x0, bh, bw) in enumerate(blocks):
                iy = _reflect_index(np.arange(y0 - margin, y0 - margin + wy), h)
                ix = _reflect_index(np.arange(x0 - margin, x0 - margin + wx), w)
                window = np.ascontiguousarray(x[:, iy[:, None], ix[None, :]])
                logits = model(torch.from_numpy(window)[None].to(dev))
                p = torch.softmax(logits, dim=1)[0, :, margin:margin + bh, margin:margin + bw]
                out[:, y0:y0 + bh, x0:x0 + bw] = p.float().cpu().numpy()
                if tile_done is not None:
                    tile_done(k + 1, len(blocks))
    finally:
        model.train(was_training)
    return out


def predict_probs_tta(model, x: np.ndarray, tile_size=DEFAULT_TILE, overlap=None, n_tiles=None,
                      tile_done=None) -> np.ndarray:
    """:func:`predict_probs` averaged over the image's 8 flips / 90° turns (test-time augmentation)."""
    from ..dihedral import ALL, backward, forward

    acc = None
    for i, t in enumerate(ALL):
        counts = None if n_tiles is None else (tuple(n_tiles)[::-1] if t.transpose else tuple(n_tiles))

        def done(k, n, i=i):
            if tile_done is not None:
                tile_done(i * n + k, n * len(ALL))

        p = predict_probs(model, np.ascontiguousarray(forward(t, x, y_axis=1)), tile_size, overlap, counts, done)
        p = backward(t, p, y_axis=1)
        acc = p.copy() if acc is None else acc + p
    return acc / len(ALL)


def _polygons(labels: np.ndarray) -> list[np.ndarray]:
    """Outline (y, x) of each object, in label order (longest contour of the object)."""
    from skimage.measure import find_contours, regionprops

    out = []
    for r in regionprops(labels):
        y0, x0 = r.bbox[:2]
        contours = find_contours(np.pad(r.image, 1).astype(np.float32), 0.5)
        if not contours:
            continue
        poly = max(contours, key=len)[:-1] + np.array([y0 - 1, x0 - 1])
        out.append(poly)
    return out


def _parse_tiles(n_tiles, tile_size):
    """-> (tile_size, n_tiles) for :func:`predict_probs`."""
    if isinstance(n_tiles, str):
        if n_tiles != "auto":
            raise InputError(f"n_tiles must be 'auto', None or a tuple, not {n_tiles!r}")
        return int(tile_size or DEFAULT_TILE), None
    if n_tiles is None:
        return (int(tile_size) if tile_size else None), None
    tiles = tuple(int(t) for t in n_tiles)
    if len(tiles) != 2 or min(tiles) < 1:
        raise InputError(f"n_tiles needs 2 positive numbers (Y, X) for a 2D model, got {tiles}")
    return None, tiles


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
) -> SegmentationResult:
    """Segment ``image`` with a U-Net model folder; see :class:`SegmentationResult`.

    ``prob_thresh`` is the watershed seed threshold on the interior probability
    (default: the model's optimized one); ``nms_thresh`` has no meaning for a U-Net and
    is ignored. ``n_tiles``: ``"auto"`` tiles of ``tile_size`` (default 512) pixels,
    ``None`` one tile for the whole image (unless ``tile_size`` is given), or a tile
    count per axis. Stacks with a leading T axis are processed frame by frame
    (``frames`` restricts which; the others stay 0); a Z stack (``axes="ZYX"``/``"TZYX"``)
    slice by slice, with ``stitch_z`` linking overlapping objects of neighbouring slices.
    ``pmin``/``pmax`` ``None``: the model card's normalization. ``tta``: average the class
    probabilities over the image's 8 flips / 90° turns (about 8x the network time).
    """
    from .io import load_model

    t0 = time.perf_counter()
    if isinstance(card, str):
        card = (registry or ModelRegistry()).get(card)
    if card.backend != "unet":
        raise InputError(f"model {card.name!r} is a {card.backend} model, not a U-Net model")
    if not card.path:
        raise CorruptModel(f"the U-Net model {card.name!r} has no folder")
    norm = resolve_normalization(card.normalization, pmin, pmax, f"model {card.name!r}")
    progress(0.0, f"loading model {card.name}")
    loaded = load_model(card.path)
    model, cfg = _to_best_device(loaded.model), loaded.config
    inp = prepare_input(image, axes, card.name, 2, cfg.in_channels)
    tile, counts = _parse_tiles(n_tiles, tile_size)
    thr = loaded.thresholds
    seed = float(thr["seed"] if prob_thresh is None else prob_thresh)
    if not 0.0 < seed < 1.0:
        raise InputError(f"the probability (seed) threshold must lie between 0 and 1, got {seed}")
    fg, min_size = float(thr["fg"]), int(thr["min_size"])

    def one_frame(step) -> FrameSegmentation:
        with step.timed("network_s"):
            x = inp.normalized(step.index, norm)
            x = np.moveaxis(x, -1, 0) if inp.has_c else x[None]

            def run():
                if not np.any(x):  # constant (or empty) frame: nothing to segment
                    return None
                return (predict_probs_tta if tta else predict_probs)(model, x, tile, tile_overlap, counts, step.tile)

            probs, cached = _RAW.get_or_make((loaded.key, image_key(x), tile, counts, tile_overlap, tta), run)
        with step.timed("watershed_s"):
            if probs is None:
                return FrameSegmentation(np.zeros(x.shape[1:], np.int32), np.zeros(0), [] if return_polygons else None,
                                         cached, constant=True)
            labels = instances_from_probs(probs, seed_thresh=seed, fg_thresh=fg, min_size=min_size)
            obj_p = object_probabilities(labels, probs[INTERIOR])
        return FrameSegmentation(labels, obj_p, _polygons(labels) if return_polygons else None, cached)

    indices = inp.indices(frames)
    timings: dict[str, float] = {"network_s": 0.0, "watershed_s": 0.0}
    outs = run_frames(indices, one_frame, progress, describe_frame, "slice" if inp.slice_wise else "frame", timings)
    labels_out, table, polygons, notes = assemble_segmentation(inp, indices, outs, return_polygons, stitch_z,
                                                               model_name=card.name)
    timings["total_s"] = time.perf_counter() - t0
    return SegmentationResult(labels_out, table, card.name, seed, None, polygons, inp.warnings + notes, timings, tta,
                              norm, inp.processed(indices))


predict_job = model_job(segment)


__all__ = ["segment", "predict_probs", "predict_probs_tta", "tile_plan", "predict_job", "default_overlap"]
