"""Lazy images (dask arrays, zarr arrays, an OME-Zarr pyramid's full-resolution level) processed
block by block from the caller's process, each block's model run handed to a callable (in napari:
a job in the compute worker), so that the image is never loaded whole.

* :func:`full_resolution` / :func:`is_lazy` / :func:`needs_blocks`: which layer data to process
  block-wise -- lazy and larger than :func:`.large.block_threshold` pixels per plane, the
  command line's threshold (``NAPARI_CNNVISION_BLOCK_PIXELS``; a smaller lazy array is simply loaded);
* :func:`segment_lazy`: :func:`.blockwise.segment_blockwise` (overlapping windows, objects
  stitched across block borders, the image's own normalization fixed for every window) into an
  OME-Zarr labels folder, plus a pyramid of coarser levels (:func:`add_pyramid`) so that a viewer
  shows it lazily too (:func:`open_labels`);
* detection: :mod:`.lazy_detect`.

Nothing here imports Qt, napari or a deep-learning framework.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import large

#: block (core) size of block-wise segmentation, as the command line's ``--blocks`` default
SEGMENT_BLOCK = 2048
#: the whole image's normalization comes from a regular subsample of at most this many pixels
SAMPLE_PIXELS = 4_000_000
#: pyramid levels are added until the coarsest one's longest side is at most this
PYRAMID_SIDE = 1024


def full_resolution(data, multiscale: bool = False):
    """The full-resolution array of a layer's data (level 0 of a multiscale pyramid)."""
    return data[0] if multiscale else data


def is_lazy(array) -> bool:
    """True for array data that is not in memory (dask, zarr, tifffile's zarr store, h5py, ...):
    anything but a numpy array, whose ``np.asarray`` would read it all."""
    return not isinstance(array, np.ndarray)


def plane_shape(shape, rgb: bool = False) -> tuple[int, int]:
    """(H, W) of one plane of an array of ``shape`` (``(..., H, W[, C])``)."""
    core = tuple(int(s) for s in shape)[:-1] if rgb else tuple(int(s) for s in shape)
    return core[-2], core[-1]


def needs_blocks(array, rgb: bool = False) -> bool:
    """True when ``array`` is lazy and a plane of it is larger than :func:`.large.block_threshold`
    pixels (the command line's threshold; a ValueError for a bad ``NAPARI_CNNVISION_BLOCK_PIXELS``)."""
    if not is_lazy(array) or len(np.shape(array)) < 2:
        return False
    h, w = plane_shape(np.shape(array), rgb)
    return h * w > large.block_threshold()


def load(array):
    """A lazy array that is small enough, read into memory (a numpy array passes through)."""
    if hasattr(array, "compute") and not isinstance(array, np.ndarray):
        return np.asarray(array.compute())
    return np.asarray(array)


def cache_dir() -> Path:
    """Where block-wise results go unless the user chose a folder: ``NAPARI_CNNVISION_CACHE_DIR``
    or the per-user cache folder."""
    import os

    env = os.environ.get("NAPARI_CNNVISION_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cnnvision", appauthor=False))


def output_path(folder: str | Path | None, image_name: str, model: str, suffix: str = ".zarr") -> Path:
    """``folder/<image> [<model>].zarr`` (``folder`` None: :func:`cache_dir` ``/labels``), the name
    made safe for any file system; a re-run of the same image and model replaces it."""
    safe = re.sub(r"[^\w\-. \[\]]+", "_", f"{image_name} [{model}]").strip(" .") or "labels"
    base = Path(folder) if folder else cache_dir() / "labels"
    return base / f"{safe}{suffix}"


# -- segmentation -----------------------------------------------------------------------------
@dataclass
class BlockwiseLabels:
    """A block-wise segmentation: the labels are in the OME-Zarr folder ``path`` (level ``0`` the
    full resolution, coarser levels ``1``, ``2``, ...), the object table in ``table``."""

    path: Path
    shape: tuple[int, int]
    table: dict
    model: str
    block: int
    overlap: int
    n_blocks: int
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    tta: bool = False
    normalization: dict | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return len(self.table.get("label", ()))


#: ``run_window(window, card, span, label)`` -> the window's SegmentationResult; ``window`` is
#: the image's normalized window, ``card`` the model card to run it with (normalization fixed),
#: ``span`` the ``(start, end)`` fraction of the whole run that this window covers, ``label``
#: e.g. ``"block 3/16"``.
RunWindow = Callable[[np.ndarray, object, tuple, str], object]


def segment_lazy(source, out_path: str | Path, card, run_window: RunWindow, *, block: int | None = None,
                 overlap: int | None = None, pmin: float | None = None, pmax: float | None = None,
                 progress=None, check: Callable[[], None] | None = None, tta: bool = False) -> BlockwiseLabels:
    """Segment the lazy 2-D ``source`` block by block into the OME-Zarr labels ``out_path``.

    The image is normalized as a whole (:func:`.blockwise.global_normalization`); each window is
    read, normalized and given to ``run_window``; ``check()`` (e.g. raising ``Cancelled``) runs
    before each window. ``progress(fraction, message)`` gets one event per block."""
    from .blockwise import default_overlap, global_normalization, segment_blockwise, windows

    t0 = time.perf_counter()
    if len(source.shape) != 2:
        raise ValueError(f"block-wise segmentation takes a 2-D (YX) image, not shape {tuple(source.shape)}")
    shape = (int(source.shape[0]), int(source.shape[1]))
    block = int(SEGMENT_BLOCK if block is None else block)
    overlap = default_overlap(block) if overlap is None else int(overlap)
    n = sum(1 for _ in windows(shape, block, overlap))
    if progress is not None:
        progress(0.0, "normalization: sampling the image")
    fixed, lo, hi = global_normalization(source, card, pmin, pmax, max_pixels=SAMPLE_PIXELS)
    scale = np.float32(1.0 / (hi - lo + 1e-20))
    seen: dict = {"k": 0, "warnings": [], "res": None}

    def one(window: np.ndarray):
        if check is not None:
            check()
        k = seen["k"]
        x = window if fixed is card else (window.astype(np.float32) - np.float32(lo)) * scale
        res = run_window(x, fixed, (k / n, (k + 1) / n), f"block {k + 1}/{n}")
        seen["k"] = k + 1
        seen["res"] = res
        for w in res.warnings:
            if w not in seen["warnings"]:
                seen["warnings"].append(w)
        return res

    out_path = Path(out_path)
    table = segment_blockwise(source, out_path, one, block, overlap, progress)
    add_pyramid(out_path)
    last = seen["res"]
    norm = ({"type": "percentile", "lo": lo, "hi": hi, "over": "the whole image"} if fixed is not card
            else dict(card.normalization or {}))
    return BlockwiseLabels(out_path, shape, table, card.name, block, overlap, n,
                           getattr(last, "prob_thresh", None), getattr(last, "nms_thresh", None), bool(tta),
                           norm, seen["warnings"], {"total_s": time.perf_counter() - t0})


# -- the OME-Zarr labels pyramid --------------------------------------------------------------------
def add_pyramid(path: str | Path, min_side: int | None = None) -> int:
    """Add coarser levels ``1``, ``2``, ... (every 2nd row and column of the level above: label
    values stay exact) to the OME-Zarr labels at ``path`` until the longest side is at most
    ``min_side`` (default :data:`PYRAMID_SIDE`); read and written chunk by chunk. The multiscales
    metadata lists the levels once all are written. Returns the number of levels."""
    import zarr

    min_side = PYRAMID_SIDE if min_side is None else int(min_side)
    root = zarr.open_group(str(path), mode="r+")
    level = root["0"]
    attrs = dict(root.attrs)
    ms = attrs["multiscales"][0]
    datasets = list(ms["datasets"][:1])
    k = 0
    while max(level.shape) > min_side:
        h, w = level.shape
        ch, cw = level.chunks
        nxt = root.create_array(str(k + 1), shape=(math.ceil(h / 2), math.ceil(w / 2)), chunks=(ch, cw),
                                dtype=level.dtype, fill_value=0, overwrite=True)
        for y0 in range(0, h, 2 * ch):
            for x0 in range(0, w, 2 * cw):
                part = np.asarray(level[y0:y0 + 2 * ch:2, x0:x0 + 2 * cw:2])
                nxt[y0 // 2:y0 // 2 + part.shape[0], x0 // 2:x0 // 2 + part.shape[1]] = part
        k += 1
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [float(2 ** k), float(2 ** k)]}]})
        level = nxt
    ms["datasets"] = datasets
    root.attrs.update(attrs)
    return k + 1


def open_labels(path: str | Path, mode: str = "r"):
    """The labels at ``path`` as napari layer data, read lazily: the list of pyramid levels (full
    resolution first), or the one array when there is no coarser level."""
    import zarr

    root = zarr.open_group(str(path), mode=mode)
    names = [d["path"] for d in root.attrs["multiscales"][0]["datasets"]]
    levels = [root[p] for p in names]
    return levels if len(levels) > 1 else levels[0]


__all__ = ["SEGMENT_BLOCK", "BlockwiseLabels", "full_resolution", "is_lazy", "needs_blocks",
           "plane_shape", "load", "cache_dir", "output_path", "segment_lazy", "add_pyramid", "open_labels"]
