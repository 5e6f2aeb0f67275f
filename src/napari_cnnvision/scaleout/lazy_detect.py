"""Detection on a lazy image (dask, zarr, ...) too large to load, tile by tile from the caller's
process: the image is cut into the tiles a whole-image run uses (the model's input size, with
overlap); a few at a time are read, one after another, and handed to a callable that runs the
detector on them (in napari: the detect job in the compute worker) with the network's raw
thresholds; the raw boxes are merged as :mod:`..backends.detection.tiling` merges a whole image's
tiles (a box cut by a tile's inner border that another tile holds whole goes), then the score
threshold and a class-wise NMS apply -- the same steps, on the same tiles, as a whole-image run.

Intensities: an integer image within the model's range (8-bit data for a 1/255 model) goes as it
is -- each tile then gets exactly the whole image's scaling; otherwise the whole image's scaling
(or percentiles) is taken from a regular subsample and applied here, each tile reaching the model
as float 0..1 (percentile-normalized values above 1, the brightest pixels, are clipped to 1).

No framework is imported here (the NMS is numpy).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.results import DetectionResult

#: tiles of a model without an input size (and its overlap: more than the largest box)
DETECT_BLOCK = 2048
DETECT_OVERLAP = 256
#: tiles read, stacked and sent to the detector at a time
TILE_BATCH = 4
SAMPLE_PIXELS = 4_000_000


def _subsample(source, max_pixels: int | None = None) -> np.ndarray:
    max_pixels = SAMPLE_PIXELS if max_pixels is None else max_pixels
    h, w = int(source.shape[0]), int(source.shape[1])
    step = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
    return np.asarray(source[::step, ::step])


def tile_input(source, card, warnings_: list[str]):
    """``(convert, card, normalization)``: ``convert(tile)`` is what goes to the detector with
    ``card`` (the model's, or one with a fixed scale of 1 when the tile is normalized here);
    ``normalization`` says what the image got."""
    from ..backends.detection.predict import _percentiles, _scale_factor
    from ..core.normalize import resolve_normalization

    norm = resolve_normalization(card.normalization, model=card.name)
    dtype = np.dtype(source.dtype)
    if norm["type"] == "scale":
        full = 1.0 / norm["factor"]
        if np.issubdtype(dtype, np.integer) and np.iinfo(dtype).max <= full:
            # exact: every tile gets the whole image's factor
            return (lambda tile: tile), card, {"type": "scale", "factor": norm["factor"]}
        sub = _subsample(source)
        offset, factor = 0.0, _scale_factor(sub, norm["factor"], warnings_)
        top = 1.0
    else:
        sub = _subsample(source)
        if sub.ndim == 3 and sub.shape[-1] == 4:
            sub = sub[..., :3]
        lo, hi = _percentiles(sub, norm["pmin"], norm["pmax"])
        offset, factor, top = lo, 1.0 / max(hi - lo, 1e-20), 1.0
        warnings_.append("percentile normalization over the whole image (from a subsample); values above the "
                         f"{norm['pmax']:g}th percentile were clipped")
    fixed = dataclasses.replace(card, normalization={"type": "scale", "factor": 1.0})

    def convert(tile):
        x = tile.astype(np.float32)
        if np.issubdtype(tile.dtype, np.floating):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x = (x - np.float32(offset)) * np.float32(factor)
        return np.minimum(x, np.float32(top), out=x)

    return convert, fixed, {"type": norm["type"], "offset": float(offset), "factor": float(factor),
                            "over": "the whole image"}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one (y0, x0, y1, x1) box ``a`` with each row of ``b``."""
    iy = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ix = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iy * ix
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def class_nms(boxes, class_ids, scores, iou_thresh: float) -> np.ndarray:
    """Indices kept by greedy class-wise NMS, highest score first (numpy; the same rule as
    :func:`..backends.detection.tiling.class_nms`, which needs torch)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    class_ids = np.asarray(class_ids, np.int64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    for c in np.unique(class_ids):
        idx = order[class_ids[order] == c]
        while idx.size:
            i, idx = idx[0], idx[1:]
            keep.append(int(i))
            if idx.size:
                idx = idx[box_iou(boxes[i], boxes[idx]) <= iou_thresh]
    keep_arr = np.asarray(keep, np.int64)
    return keep_arr[np.argsort(-np.asarray(scores, np.float64)[keep_arr], kind="stable")] if keep else keep_arr


def tile_plan(card, shape: tuple[int, int]):
    """``(tile (h, w), overlap (h, w))``: the tiles a whole-image run of ``card`` cuts an image of
    ``shape`` into (:func:`..backends.detection.predict.tile_plan`, from the model folder's
    ``config.json``: no weights loaded); :data:`DETECT_BLOCK` / :data:`DETECT_OVERLAP` for a model
    without an input size (it would run a whole image at once)."""
    from ..backends.detection.models import read_config
    from ..backends.detection.predict import Detector, _size2
    from ..backends.detection.predict import tile_plan as plan

    cfg = read_config(card.path) if card.path and Path(card.path, "config.json").is_file() else {}
    det = Detector(None, list(card.classes), card.name, input_size=_size2(cfg.get("input_size")),
                   tile_overlap=cfg.get("tile_overlap"))
    tile, overlap = plan(shape, det)
    if tile is None:
        side = (min(DETECT_BLOCK + DETECT_OVERLAP, shape[0]), min(DETECT_BLOCK + DETECT_OVERLAP, shape[1]))
        tile, overlap = side, (min(DETECT_OVERLAP, side[0] - 1), min(DETECT_OVERLAP, side[1] - 1))
    return tile, overlap


#: ``run_tiles(stack, card, span, label)`` -> the DetectionResult of a stack of tiles (``frame``:
#: the tile's index in the stack), run untiled with the network's raw thresholds; ``span`` is the
#: ``(start, end)`` fraction of the whole run it covers, ``label`` e.g. ``"tiles 5-8/64"``
RunTiles = Callable[[np.ndarray, object, tuple, str], DetectionResult]


def detect_lazy(source, card, run_tiles: RunTiles, *, score_thresh: float, nms_thresh: float,
                batch: int | None = None, progress=None, check: Callable[[], None] | None = None) -> DetectionResult:
    """Detect objects in the lazy ``source`` (H, W[, C]) tile by tile, as a whole-image run does.

    The tiles are the whole-image run's (:func:`tile_plan`); ``batch`` of them at a time are read
    (one after another), stacked and handed to ``run_tiles``; their raw boxes are merged as in
    :func:`..backends.detection.tiling.detect_tiled` (cut boxes held whole by another tile go),
    then the score threshold and a class-wise NMS apply. ``check()`` (e.g. raising ``Cancelled``)
    runs before each batch; ``progress(fraction, message)`` gets one event per batch."""
    from ..backends.detection.tiling import drop_cut_boxes, tile_windows

    t0 = time.perf_counter()
    batch = max(1, int(TILE_BATCH if batch is None else batch))
    shape = (int(source.shape[0]), int(source.shape[1]))
    tile, overlap = tile_plan(card, shape)
    wins = tile_windows(shape, tile, overlap)
    warnings_: list[str] = []
    if progress is not None:
        progress(0.0, "normalization: sampling the image")
    convert, fixed, used_norm = tile_input(source, card, warnings_)
    boxes, ids, scores, tile_of = [], [], [], []
    class_names, model = list(card.classes), card.name
    for start in range(0, len(wins), batch):
        if check is not None:
            check()
        group = wins[start:start + batch]
        stack = np.stack([convert(np.asarray(source[y0:y1, x0:x1])) for (y0, x0, y1, x1) in group])
        res = run_tiles(stack, fixed, (start / len(wins), (start + len(group)) / len(wins)),
                        f"tiles {start + 1}-{start + len(group)}/{len(wins)}")
        del stack
        class_names, model = list(res.class_names), res.model
        origin = np.array([[y0, x0, y0, x0] for (y0, x0, _, _) in group], np.float64)
        boxes.append(res.boxes + origin[res.frame])
        ids.append(res.class_ids)
        scores.append(res.scores)
        tile_of.append(start + res.frame)
        warnings_.extend(w for w in res.warnings if w not in warnings_)
        if progress is not None:
            progress((start + len(group)) / len(wins), f"tiles {start + len(group)}/{len(wins)}")
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    c = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    s = np.concatenate(scores) if scores else np.zeros(0)
    t = np.concatenate(tile_of) if tile_of else np.zeros(0, np.int64)
    keep = np.flatnonzero(drop_cut_boxes(b, t, wins, shape))
    keep = keep[s[keep] >= score_thresh]
    keep = keep[class_nms(b[keep], c[keep], s[keep], nms_thresh)]
    timings = {"total_s": time.perf_counter() - t0}
    return DetectionResult(b[keep], c[keep], s[keep], class_names, model, shape, None, False, score_thresh,
                           nms_thresh, warnings_, timings, used_norm)


def raw_thresholds(score_thresh: float, nms_thresh: float) -> tuple[float, float]:
    """The thresholds to run tiles with so that their raw boxes are those a whole-image run
    merges (:data:`..backends.detection.predict.RAW_SCORE` / ``RAW_NMS``)."""
    from ..backends.detection.predict import RAW_NMS, RAW_SCORE

    return min(RAW_SCORE, float(score_thresh)), max(RAW_NMS, float(nms_thresh))


__all__ = ["DETECT_BLOCK", "DETECT_OVERLAP", "TILE_BATCH", "tile_input", "class_nms", "detect_lazy", "raw_thresholds",
           "tile_plan"]
