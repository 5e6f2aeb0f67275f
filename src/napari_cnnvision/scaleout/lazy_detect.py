"""Detection on a lazy image (dask, zarr, ...) too large to load, block by block from the caller's
process: each overlapping block is read alone and handed to a callable that runs the detector on
it (in napari: the detect job in the compute worker, which tiles the block at the model's input
size itself); the blocks' boxes are merged like the tiles of one image (:mod:`..backends.detection.
tiling`: a box cut by a block's inner border that another block holds whole goes), then a
class-wise NMS removes the objects seen whole by two blocks.

Intensities: an integer image within the model's range (8-bit data for a 1/255 model) goes as it
is -- each block then gets exactly the whole image's scaling; otherwise the whole image's scaling
(or percentiles) is taken from a regular subsample and applied here, each block reaching the model
as float 0..1 (percentile-normalized values above 1, the brightest pixels, are clipped to 1).

No framework is imported here (the NMS is numpy).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from ..core.results import DetectionResult

#: block (core) size and overlap of block-wise detection; the overlap must exceed the largest box
DETECT_BLOCK = 2048
DETECT_OVERLAP = 256
SAMPLE_PIXELS = 4_000_000


def _subsample(source, max_pixels: int | None = None) -> np.ndarray:
    max_pixels = SAMPLE_PIXELS if max_pixels is None else max_pixels
    h, w = int(source.shape[0]), int(source.shape[1])
    step = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
    return np.asarray(source[::step, ::step])


def block_input(source, card, warnings_: list[str]):
    """``(convert, card, normalization)``: ``convert(block)`` is what goes to the detector with
    ``card`` (the model's, or one with a fixed scale of 1 when the block is normalized here);
    ``normalization`` says what the image got."""
    from ..backends.detection.predict import _percentiles, _scale_factor
    from ..core.normalize import resolve_normalization

    norm = resolve_normalization(card.normalization, model=card.name)
    dtype = np.dtype(source.dtype)
    if norm["type"] == "scale":
        full = 1.0 / norm["factor"]
        if np.issubdtype(dtype, np.integer) and np.iinfo(dtype).max <= full:
            # exact: every block gets the whole image's factor
            return (lambda block: block), card, {"type": "scale", "factor": norm["factor"]}
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

    def convert(block):
        x = block.astype(np.float32)
        if np.issubdtype(block.dtype, np.floating):
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


#: ``run_block(block, card, span)`` -> the block's DetectionResult (boxes in block pixels)
RunBlock = Callable[[np.ndarray, object, tuple], DetectionResult]


def detect_lazy(source, card, run_block: RunBlock, *, score_thresh: float, nms_thresh: float,
                block: int | None = None, overlap: int | None = None, progress=None,
                check: Callable[[], None] | None = None) -> DetectionResult:
    """Detect objects in the lazy ``source`` (H, W[, C]) block by block; see the module docstring.

    ``check()`` (e.g. raising ``Cancelled``) runs before each block; ``progress(fraction,
    message)`` gets one event per block; ``block`` / ``overlap`` default to :data:`DETECT_BLOCK` /
    :data:`DETECT_OVERLAP`."""
    from ..backends.detection.tiling import drop_cut_boxes, tile_windows

    block = DETECT_BLOCK if block is None else block
    overlap = DETECT_OVERLAP if overlap is None else overlap

    t0 = time.perf_counter()
    shape = (int(source.shape[0]), int(source.shape[1]))
    size = (min(int(block) + int(overlap), shape[0]), min(int(block) + int(overlap), shape[1]))
    ov = (min(int(overlap), size[0] - 1), min(int(overlap), size[1] - 1))
    wins = tile_windows(shape, size, ov)
    warnings_: list[str] = []
    if progress is not None:
        progress(0.0, "normalization: sampling the image")
    convert, fixed, used_norm = block_input(source, card, warnings_)
    boxes, ids, scores, tile_of = [], [], [], []
    class_names, model = list(card.classes), card.name
    for k, (y0, x0, y1, x1) in enumerate(wins):
        if check is not None:
            check()
        res = run_block(convert(np.asarray(source[y0:y1, x0:x1])), fixed, (k / len(wins), (k + 1) / len(wins)))
        class_names, model = list(res.class_names), res.model
        boxes.append(res.boxes + np.array([y0, x0, y0, x0], np.float64))
        ids.append(res.class_ids)
        scores.append(res.scores)
        tile_of.append(np.full(res.n_objects, k, np.int64))
        warnings_.extend(w for w in res.warnings if w not in warnings_)
        if progress is not None:
            progress((k + 1) / len(wins), f"block {k + 1}/{len(wins)}: {res.n_objects} objects")
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    c = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    s = np.concatenate(scores) if scores else np.zeros(0)
    t = np.concatenate(tile_of) if tile_of else np.zeros(0, np.int64)
    keep = np.flatnonzero(drop_cut_boxes(b, t, wins, shape))
    keep = keep[class_nms(b[keep], c[keep], s[keep], nms_thresh)]
    timings = {"total_s": time.perf_counter() - t0, "blocks": float(len(wins))}
    return DetectionResult(b[keep], c[keep], s[keep], class_names, model, shape, None, False, score_thresh,
                           nms_thresh, warnings_, timings, used_norm)


__all__ = ["DETECT_BLOCK", "DETECT_OVERLAP", "block_input", "class_nms", "detect_lazy"]
