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
from collections import OrderedDict

import numpy as np

from ...core.axes import InputError
from ...core.normalize import percentile_normalize
from ...core.progress import NULL_PROGRESS, Progress
from ...core.registry import CorruptModel, ModelCard, ModelRegistry
from ...core.results import SegmentationResult
from ..common import (compact_labels, concat_tables, image_key, object_table, offset_labels, prepare_input,
                      selected_frames)
from .targets import INTERIOR, instances_from_probs, object_probabilities

DEFAULT_TILE = 512
_RAW: OrderedDict = OrderedDict()  # probability cache, at most 2 entries


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


def _polygons(labels: np.ndarray, frame: int | None) -> list[np.ndarray]:
    """Outline (y, x) of each object, in label order (longest contour of the object)."""
    from skimage.measure import find_contours, regionprops

    out = []
    for r in regionprops(labels):
        y0, x0 = r.bbox[:2]
        contours = find_contours(np.pad(r.image, 1).astype(np.float32), 0.5)
        if not contours:
            continue
        poly = max(contours, key=len)[:-1] + np.array([y0 - 1, x0 - 1])
        out.append(np.column_stack([np.full(len(poly), frame), poly]) if frame is not None else poly)
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
    pmin: float = 1.0,
    pmax: float = 99.8,
    n_tiles: tuple[int, ...] | str | None = "auto",
    frames: list[int] | None = None,
    return_polygons: bool = False,
    progress: Progress = NULL_PROGRESS,
    registry: ModelRegistry | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    tta: bool = False,
) -> SegmentationResult:
    """Segment ``image`` with a U-Net model folder; see :class:`SegmentationResult`.

    ``prob_thresh`` is the watershed seed threshold on the interior probability
    (default: the model's optimized one); ``nms_thresh`` has no meaning for a U-Net and
    is ignored. ``n_tiles``: ``"auto"`` tiles of ``tile_size`` (default 512) pixels,
    ``None`` one tile for the whole image (unless ``tile_size`` is given), or a tile
    count per axis. Stacks with a leading T axis are processed frame by frame
    (``frames`` restricts which; the others stay 0). ``tta``: average the class
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
    progress(0.0, f"loading model {card.name}")
    loaded = load_model(card.path)
    model, cfg = _to_best_device(loaded.model), loaded.config
    inp = prepare_input(image, axes, card.name, 2, cfg.in_channels)
    has_c, frame_axes, warnings_ = inp.has_c, inp.frame_axes, inp.warnings
    tile, counts = _parse_tiles(n_tiles, tile_size)
    thr = loaded.thresholds
    seed = float(thr["seed"] if prob_thresh is None else prob_thresh)
    if not 0.0 < seed < 1.0:
        raise InputError(f"the probability (seed) threshold must lie between 0 and 1, got {seed}")
    fg, min_size = float(thr["fg"]), int(thr["min_size"])
    model_key = loaded.key

    todo = selected_frames(inp.n_frames, frames)
    t_ax = inp.has_t
    labels_out = np.zeros(inp.labels_shape, np.int32)
    tables, polygons = [], [] if return_polygons else None
    t_net = t_post = 0.0
    constant_frames = []
    offset = 0
    for k, f in enumerate(todo):
        progress.check()
        frame = inp.frame(f)
        ta = time.perf_counter()
        fkey = (model_key, image_key(frame), frame_axes, pmin, pmax, tile, counts, tile_overlap, tta)
        cached = fkey in _RAW
        if cached:
            _RAW.move_to_end(fkey)
            probs = _RAW[fkey]
        else:
            x = percentile_normalize(frame, pmin, pmax)
            x = np.moveaxis(x, -1, 0) if has_c else x[None]
            if not np.any(x):  # constant (or empty) frame: nothing to segment
                probs = None
            else:
                def tile_done(i, n, k=k):
                    progress((k + 0.9 * i / n) / len(todo), f"frame {k + 1}/{len(todo)}: tile {i}/{n}")
                    progress.check()

                probs = (predict_probs_tta if tta else predict_probs)(model, x, tile, tile_overlap, counts, tile_done)
            _RAW[fkey] = probs
            while len(_RAW) > 2:
                _RAW.popitem(last=False)
        tb = time.perf_counter()
        if probs is None:
            constant_frames.append(f)
            labels = np.zeros(frame.shape[:-1] if has_c else frame.shape, np.int32)
            obj_p = np.zeros(0)
        else:
            labels = instances_from_probs(probs, seed_thresh=seed, fg_thresh=fg, min_size=min_size)
            obj_p = object_probabilities(labels, probs[INTERIOR])
        t_net += tb - ta
        t_post += time.perf_counter() - tb
        table_f = object_table(labels, obj_p, f if t_ax else None)
        if t_ax:  # labels stay unique across the stack
            labels, table_f, offset = offset_labels(labels, table_f, offset)
            labels_out[f] = labels
        else:
            labels_out = labels
        tables.append(table_f)
        if polygons is not None:
            polygons.extend(_polygons(labels, f if t_ax else None))
        progress((k + 1) / len(todo), f"frame {k + 1}/{len(todo)}: {len(tables[-1]['label'])} objects"
                 + (" (cached network output)" if cached else ""))
    if constant_frames:
        which = "the image is" if not t_ax else f"{len(constant_frames)} frame(s) are"
        warnings_.append(f"{which} constant after normalization; no objects there")
    table = concat_tables(tables) if tables else object_table(np.zeros((1, 1), np.int32), np.zeros(0),
                                                              0 if t_ax else None)
    labels_out = compact_labels(labels_out)
    return SegmentationResult(labels_out, table, card.name, seed, None, polygons, warnings_,
                              {"network_s": t_net, "watershed_s": t_post, "total_s": time.perf_counter() - t0},
                              tta)


def predict_job(progress, image, model, **kwargs):
    """Worker job: ``model`` is a registry name, a folder path or a card dict."""
    if isinstance(model, dict):
        model = ModelCard.from_dict(model, model.get("source", "path"), model.get("path"))
    card = model
    return segment(image, card, progress=progress, **kwargs)



__all__ = ["segment", "predict_probs", "predict_probs_tta", "tile_plan", "predict_job", "default_overlap"]
