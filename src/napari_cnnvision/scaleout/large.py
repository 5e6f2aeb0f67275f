"""Which inputs of ``napari-cnnvision segment`` go the block-wise way, and their outputs.

An input is segmented block by block (:mod:`.blockwise`) when it is a zarr array / OME-Zarr
image, or a 2-D TIFF of more than :func:`block_threshold` pixels (read from its header, nothing
loaded), or when ``--blocks N`` is given. Its labels go to ``DIR/<stem>.zarr`` (OME-Zarr labels, with
coarser levels for viewing: :func:`.lazy_layers.add_pyramid`)
or, with ``--format tif``, to a tiled ``DIR/<stem>.tif`` converted from the zarr array tile by
tile; the object table to ``DIR/<stem>.csv`` as for any image. Memory stays set by the block.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

#: above this many pixels (height x width) a 2-D TIFF is segmented block-wise by itself
DEFAULT_BLOCK_PIXELS = 4096 * 4096
#: environment variable that sets another threshold (pixels; tests lower it)
BLOCK_PIXELS_ENV = "NAPARI_CNNVISION_BLOCK_PIXELS"
DEFAULT_BLOCK = 2048
LABEL_FORMATS = ("zarr", "tif")
TIFF_TILE = 512


def block_threshold() -> int:
    """The pixel count above which an image goes block-wise (:data:`BLOCK_PIXELS_ENV` or the default)."""
    v = os.environ.get(BLOCK_PIXELS_ENV, "").strip()
    if not v:
        return DEFAULT_BLOCK_PIXELS
    try:
        n = int(float(v))
    except ValueError:
        raise ValueError(f"{BLOCK_PIXELS_ENV} must be a number of pixels (got {v!r})") from None
    if n < 1:
        raise ValueError(f"{BLOCK_PIXELS_ENV} must be 1 or more pixels (got {v!r})")
    return n


def is_zarr(path: Path) -> bool:
    """A zarr array or group folder (v2 or v3)."""
    p = Path(path)
    return p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).is_file() for m in
                                                              (".zarray", ".zgroup", "zarr.json")))


def expand(items) -> list[Path]:
    """:func:`~napari_cnnvision.core.images.expand_inputs`, with zarr folders as images (given, or
    inside a given folder)."""
    from ..core.images import expand_inputs

    out, seen = [], set()
    for item in items:
        p = Path(item)
        if is_zarr(p):
            found = [p]
        elif p.is_dir():
            found = sorted(expand_inputs([p]) + [q for q in p.iterdir() if is_zarr(q)])
        else:
            found = [p]
        for q in found:  # each image once, in its first place
            if q.resolve() not in seen:
                seen.add(q.resolve())
                out.append(q)
    return out


def tiff_yx_pixels(path: Path) -> int | None:
    """Height x width of a 2-D TIFF from its header (``None``: not a TIFF, not 2-D, unreadable)."""
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            shape = tuple(tf.series[0].shape)
    except Exception:  # unreadable: the plain path reports it
        return None
    return shape[0] * shape[1] if len(shape) == 2 else None


def goes_blockwise(path: Path, threshold: int) -> bool:
    if is_zarr(path):
        return True
    n = tiff_yx_pixels(path)
    return n is not None and n > threshold


def labels_path(tif: Path, fmt: str | None) -> Path:
    """The block-wise labels output beside the plain one (``tif`` from ``plan_outputs``)."""
    return tif if fmt == "tif" else tif.with_suffix(".zarr")


def segment_one(src: Path, labels: Path, csv: Path, card, block: int = DEFAULT_BLOCK, overlap: int | None = None,
                progress=None, segmenter=None, **segment_kwargs) -> dict:
    """Segment ``src`` block-wise into ``labels`` (``.zarr``: OME-Zarr labels; ``.tif``: a tiled
    TIFF) and ``csv`` (the object table); returns the table. Nothing half-written is left.
    ``segmenter``: what segments the file into a zarr folder instead of
    :func:`.blockwise.segment_file_blockwise` (same arguments; e.g. on a Dask cluster)."""
    from .blockwise import segment_file_blockwise

    segment_file_blockwise = segmenter or segment_file_blockwise

    if labels.suffix.lower() == ".zarr":
        from .lazy_layers import add_pyramid

        table = segment_file_blockwise(src, labels, card, block, overlap, progress=progress, **segment_kwargs)
        add_pyramid(labels)  # coarser levels, so that napari shows a large result at once (metadata last)
    else:
        tmp = Path(tempfile.mkdtemp(dir=labels.parent, prefix=f".{labels.stem}.", suffix=".zarr"))
        try:
            table = segment_file_blockwise(src, tmp / "labels.zarr", card, block, overlap, progress=progress,
                                           **segment_kwargs)
            zarr_to_tiff(tmp / "labels.zarr", labels)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_table_streamed(csv, table)
    except BaseException:
        (shutil.rmtree if labels.is_dir() else Path.unlink)(labels)  # no labels without their table
        raise
    return table


def write_table_streamed(path: Path, table: dict, rows: int = 20_000) -> Path:
    """:func:`napari_cnnvision.core.tables.write_table`'s file (the same bytes), written ``rows`` rows
    at a time instead of built whole in memory first (a large image has hundreds of thousands of
    objects); atomic."""
    import csv

    from ..core.io import atomic_write_with

    cols = list(table)
    n = len(table[cols[0]]) if cols else 0

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for i in range(0, n, rows):
                w.writerows(zip(*(np.asarray(table[c][i:i + rows]).tolist() for c in cols)))

    return atomic_write_with(path, write)


def zarr_to_tiff(src: Path, dest: Path, tile: int = TIFF_TILE) -> Path:
    """The OME-Zarr labels ``src`` as a tiled TIFF ``dest``, one tile in memory at a time (atomic)."""
    import tifffile
    import zarr

    from ..core.io import atomic_write_with

    arr = zarr.open_group(str(src), mode="r")["0"]
    h, w = arr.shape
    big = arr.nbytes >= 2 ** 32 - 2 ** 25

    def tiles():
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                t = np.zeros((tile, tile), arr.dtype)  # edge tiles padded, as TIFF tiles are
                part = arr[y0:y0 + tile, x0:x0 + tile]
                t[:part.shape[0], :part.shape[1]] = part
                yield t

    def write(tmp):
        tifffile.imwrite(tmp, tiles(), shape=(h, w), dtype=arr.dtype, tile=(tile, tile), bigtiff=big,
                         compression="zlib")

    return atomic_write_with(dest, write)
