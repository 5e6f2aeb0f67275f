"""Detection on images larger than the model's input: overlapping tiles, boxes merged back.

The image is cut into tiles of the model's input size that overlap by ``overlap`` pixels
(the last tile of a row/column is moved in to end at the image edge, so all tiles have the
same size). Each tile's boxes are mapped back to image pixels, then merged:

1. **Cut boxes go.** A box that touches an edge of its tile *inside* the image (within
   ``margin`` pixels) is an object cut by the tile border. It is dropped when another tile
   holds the same box whole (the box lies inside that tile and touches none of its inner
   edges): that tile saw the entire object, so its box is the one to keep. An object larger
   than the overlap is held whole by no tile; its pieces stay and step 2 merges them.
2. **Class-wise NMS** removes the duplicates of objects seen whole by two tiles (in their
   overlap) -- see :func:`class_nms`.

Only one batch of tiles is ever converted to float (``to_input``), so memory stays flat in the
image size. The network runs in the ``predict_batch`` callback; NMS is torchvision's.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ...core.formats import boxes_to_xyxy

Window = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive ends)
EDGE_MARGIN = 2.0  # pixels: a box edge this close to an inner tile edge counts as cut


def axis_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along an axis of length ``n``: tiles of ``tile`` pixels overlapping by at
    least ``overlap``, the first at 0 and the last ending at ``n``, spread evenly."""
    n, tile, overlap = int(n), int(tile), int(overlap)
    if tile < 1:
        raise ValueError(f"the tile size must be positive, got {tile}")
    if n <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"the tile overlap ({overlap}) must be at least 0 and less than the tile size ({tile})")
    count = math.ceil((n - overlap) / (tile - overlap))
    return sorted({int(round(v)) for v in np.linspace(0, n - tile, max(count, 2))})


def tile_windows(shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int]) -> list[Window]:
    """All tile windows (y0, x0, y1, x1) of an image of ``shape`` (H, W), row by row."""
    h, w = shape
    ys = axis_starts(h, tile[0], overlap[0])
    xs = axis_starts(w, tile[1], overlap[1])
    return [(y, x, min(y + tile[0], h), min(x + tile[1], w)) for y in ys for x in xs]


def inner_cut(boxes: np.ndarray, window: Window, shape: tuple[int, int], margin: float = EDGE_MARGIN) -> np.ndarray:
    """True for each (y0, x0, y1, x1) box that touches an edge of ``window`` lying inside the image."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    wy0, wx0, wy1, wx1 = window
    h, w = shape
    cut = np.zeros(len(b), bool)
    if wy0 > 0:
        cut |= b[:, 0] <= wy0 + margin
    if wx0 > 0:
        cut |= b[:, 1] <= wx0 + margin
    if wy1 < h:
        cut |= b[:, 2] >= wy1 - margin
    if wx1 < w:
        cut |= b[:, 3] >= wx1 - margin
    return cut


def _inside(boxes: np.ndarray, window: Window) -> np.ndarray:
    wy0, wx0, wy1, wx1 = window
    return (boxes[:, 0] >= wy0) & (boxes[:, 1] >= wx0) & (boxes[:, 2] <= wy1) & (boxes[:, 3] <= wx1)


def drop_cut_boxes(boxes: np.ndarray, tile_of: np.ndarray, windows: Sequence[Window], shape: tuple[int, int],
                   margin: float = EDGE_MARGIN) -> np.ndarray:
    """Mask of the boxes to keep: False for a box cut by its own tile's inner edge that another
    tile holds whole (inside it, touching none of its inner edges)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    tile_of = np.asarray(tile_of, np.int64)
    keep = np.ones(len(boxes), bool)
    if len(windows) < 2 or not len(boxes):
        return keep
    cut = np.zeros(len(boxes), bool)
    for t, win in enumerate(windows):
        sel = tile_of == t
        cut[sel] = inner_cut(boxes[sel], win, shape, margin)
    cand = np.flatnonzero(cut)
    if not len(cand):
        return keep
    held = np.zeros(len(cand), bool)
    for t, win in enumerate(windows):
        other = tile_of[cand] != t
        if not other.any():
            continue
        b = boxes[cand]
        held |= other & _inside(b, win) & ~inner_cut(b, win, shape, margin)
    keep[cand[held]] = False
    return keep


def class_nms(boxes: np.ndarray, class_ids: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression within each class, highest score first
    (a box goes when its IoU with a kept box of its class exceeds ``iou_thresh``);
    ``torchvision.ops.batched_nms``."""
    import torch
    from torchvision.ops import batched_nms

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0, np.int64)
    keep = batched_nms(torch.from_numpy(boxes_to_xyxy(boxes).astype(np.float32)),
                       torch.from_numpy(np.asarray(scores, np.float32)),
                       torch.from_numpy(np.asarray(class_ids, np.int64)), float(iou_thresh))
    return keep.numpy().astype(np.int64)


def detect_tiled(frame: np.ndarray, to_input: Callable[[np.ndarray], np.ndarray],
                 predict_batch: Callable[[list[np.ndarray]], list[tuple]], tile: tuple[int, int] | None,
                 overlap: tuple[int, int] = (0, 0), batch_size: int = 4, margin: float = EDGE_MARGIN,
                 tile_done: Callable[[int, int], None] | None = None):
    """Run a detector over ``frame`` (H, W[, C], any dtype) tile by tile.

    ``to_input(crop)`` turns a crop of the frame into the network's float input;
    ``predict_batch(inputs)`` returns per input ``(boxes, class_ids, scores)`` with boxes
    (y0, x0, y1, x1) in the input's pixels. ``tile=None`` runs the whole frame at once.
    Returns ``(boxes, class_ids, scores, n_tiles)`` in frame pixels, cut boxes already
    dropped (no NMS yet: see :func:`class_nms`).
    """
    shape = tuple(int(s) for s in frame.shape[:2])
    windows = [(0, 0, shape[0], shape[1])] if tile is None else tile_windows(shape, tile, overlap)
    all_b, all_c, all_s, all_t = [], [], [], []
    batch_size = max(1, int(batch_size))
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        inputs = [to_input(frame[y0:y1, x0:x1]) for (y0, x0, y1, x1) in group]
        outs = predict_batch(inputs)
        del inputs
        for k, ((y0, x0, _, _), (b, c, s)) in enumerate(zip(group, outs)):
            b = np.asarray(b, np.float64).reshape(-1, 4) + np.array([y0, x0, y0, x0], np.float64)
            all_b.append(b)
            all_c.append(np.asarray(c, np.int64).reshape(-1))
            all_s.append(np.asarray(s, np.float64).reshape(-1))
            all_t.append(np.full(len(b), start + k, np.int64))
        if tile_done is not None:
            tile_done(min(start + batch_size, len(windows)), len(windows))
    boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4))
    ids = np.concatenate(all_c) if all_c else np.zeros(0, np.int64)
    scores = np.concatenate(all_s) if all_s else np.zeros(0)
    tiles = np.concatenate(all_t) if all_t else np.zeros(0, np.int64)
    keep = drop_cut_boxes(boxes, tiles, windows, shape, margin)
    return boxes[keep], ids[keep], scores[keep], len(windows)


__all__ = ["axis_starts", "tile_windows", "inner_cut", "drop_cut_boxes", "class_nms", "detect_tiled", "EDGE_MARGIN"]
