"""Block-wise segmentation of a 2-D image too large to process whole, into an OME-Zarr labels array.

The image is cut into ``block x block`` cores; each is segmented with ``overlap`` pixels of its
neighbours around it (the window), so an object near a core's border is seen whole. Stitching:

* an object belongs to the block whose core holds its centroid (in image coordinates), so an
  object that straddles a border is kept once, from the window that saw it whole;
* blocks are merged in order; an object of a later block that lies for half or more on pixels an
  earlier block already labelled is the same object seen twice (its centroid fell on the other
  side of the border in the two windows) and is dropped; otherwise it takes the pixels still free.

``overlap`` must exceed the largest object's radius (default: an eighth of the block, at least
64 px). Only one window, its result and the output window are in memory at a time; the output is
written window by window into a chunked zarr array (OME-Zarr 0.4 multiscales + image-label
metadata) that napari opens lazily. The object table (label, area, centroid, probability) is
computed from the stitched labels, chunk by chunk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DUPLICATE = 0.5  # fraction of an object on already labelled pixels that makes it a duplicate


def default_overlap(block: int) -> int:
    return max(64, block // 8)


def windows(shape: tuple[int, int], block: int, overlap: int):
    """``(core, window)`` slices pairs in row-major order, both as ``(y0, y1, x0, x1)``."""
    h, w = shape
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            core = (y0, min(y0 + block, h), x0, min(x0 + block, w))
            win = (max(0, y0 - overlap), min(h, core[1] + overlap), max(0, x0 - overlap), min(w, core[3] + overlap))
            yield core, win


class _MappedTiff:
    """A 2-D contiguous, uncompressed TIFF read window by window through a memory map opened for
    each read and closed after it (tifffile's zarr store would see it as one chunk: the whole image)."""

    def __init__(self, path: Path, shape, dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        import tifffile

        m = tifffile.memmap(self.path, mode="r")
        try:
            return np.array(m[key])
        finally:
            del m


def open_source(path: str | Path):
    """A lazily readable array of ``path``: a zarr array / OME-Zarr image (its level 0) or a TIFF
    (a contiguous one through a memory map, else tifffile's zarr store: its tiles or strips);
    only the windows read are loaded."""
    import zarr

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                s = tf.series[0]
                shape, dtype = s.shape, s.dtype
            m = tifffile.memmap(path, mode="r")  # ValueError: compressed, tiled or not contiguous
            del m
            return _MappedTiff(path, shape, dtype)
        except ValueError:
            pass
        except (OSError, tifffile.TiffFileError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        z = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    else:
        try:
            z = zarr.open(str(path), mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read {path} as a zarr array or OME-Zarr image: {exc}") from exc
    if isinstance(z, zarr.Group):
        if "0" not in z:
            raise ValueError(f"{path} is a zarr group without a level '0' array (not an OME-Zarr image)")
        z = z["0"]  # OME-Zarr: the full-resolution level
    return z


def global_normalization(source, card, pmin=None, pmax=None, max_pixels: int = 4_000_000):
    """A copy of ``card`` whose normalization is the image's own, fixed for every window: the
    card's (or the caller's) percentiles taken over the whole image (a regular subsample of at most
    ``max_pixels`` pixels when larger), applied as a scale. Windows then see the intensities a
    whole-image run sees, and an empty window is not stretched into objects."""
    import dataclasses
    import math

    from ..core.normalize import resolve_normalization

    norm = resolve_normalization(card.normalization, pmin, pmax, card.name)
    if norm["type"] != "percentile":
        return card, 0.0, 1.0
    h, w = source.shape
    step = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
    sub = np.asarray(source[::step, ::step], np.float32)
    lo, hi = np.percentile(sub, [norm["pmin"], norm["pmax"]])
    return dataclasses.replace(card, normalization={"type": "scale", "factor": 1.0}), float(lo), float(hi)


def segment_file_blockwise(source, out_path, card, block: int = 2048, overlap: int | None = None,
                           pmin=None, pmax=None, progress=None, **segment_kwargs) -> dict:
    """:func:`segment_blockwise` of an image (path or array) with ``card`` in this process, the
    image normalized as a whole (:func:`global_normalization`); ``segment_kwargs`` go to
    :func:`napari_cnnvision.api.segment`."""
    from .. import api

    if isinstance(source, (str, Path)):
        source = open_source(source)
    fixed, lo, hi = global_normalization(source, card, pmin, pmax)
    scale = 1.0 / (hi - lo + 1e-20)

    def one(window):
        x = window if fixed is card else (window.astype(np.float32) - np.float32(lo)) * np.float32(scale)
        try:
            return api.segment(x, fixed, **segment_kwargs)
        finally:
            drop_output_caches()

    return segment_blockwise(source, out_path, one, block, overlap, progress)


#: the backends' caches of network outputs by image (module, attribute)
OUTPUT_CACHES = (("napari_cnnvision.backends.unet.predict", "_RAW"),
                 ("napari_cnnvision.backends.stardist.predict", "_RAW"),
                 ("napari_cnnvision.backends.bioimageio.predict", "_RAW"))


def drop_output_caches() -> None:
    """Empty the backends' caches of network outputs in this process (modules not imported are
    left alone). They keep the outputs of the last few images so that a threshold change re-runs
    only the post-processing; block-wise every window is a new image, so they would only hold
    memory: StarDist's 4 entries are ~0.9 GB of distances at 2560² windows, the U-Net's 2 ~0.16 GB."""
    import sys

    for module, name in OUTPUT_CACHES:
        cache = getattr(sys.modules.get(module), name, None)
        if cache is not None:
            cache.clear()


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``; elsewhere nothing). The
    windows' arrays (tens of MB) come from the heap once glibc's mmap threshold has adapted to them,
    and without this the heap's high-water mark creeps up window after window."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _write_ome_labels(path: Path, shape, chunks, dtype, name: str | None = None):
    """An empty OME-Zarr labels group at ``path``; ``name``: its multiscales name (default: the
    folder's stem; when ``path`` is a staging folder, the final folder's stem)."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    root.attrs.update({
        "multiscales": [{"version": "0.4", "name": name or Path(path).stem,
                         "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                         "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                                   "scale": [1.0, 1.0]}]}]}],
        "image-label": {"version": "0.4", "source": {"image": "../../"}},
    })
    return arr


def segment_blockwise(source, out_path: str | Path, segment_window, block: int = 2048, overlap: int | None = None,
                      progress=None, window_results=None) -> dict:
    """Segment the 2-D array ``source`` block by block into the OME-Zarr labels ``out_path``
    (written in a temp folder, moved into place when complete); returns the object table.

    ``segment_window(array)`` -> a :class:`~napari_cnnvision.core.results.SegmentationResult`
    of one window (e.g. ``lambda a: api.segment(a, card)``). ``window_results``: instead, an
    iterator of the windows' results in :func:`windows` order, computed elsewhere (a Dask
    cluster: :mod:`.cluster_blocks`); ``source`` then only gives the shape."""
    from ..core.io import staged_dir

    if len(source.shape) != 2:
        raise ValueError(f"block-wise segmentation takes a 2-D (YX) image, not shape {tuple(source.shape)}")
    overlap = default_overlap(block) if overlap is None else overlap
    out_path = Path(out_path)
    shape = tuple(int(s) for s in source.shape)
    pairs = list(windows(shape, block, overlap))
    prob = np.full(1024, np.nan)  # by stitched label; grown as labels are added
    next_label = 1
    with staged_dir(out_path) as tmp:
        out = _write_ome_labels(tmp, shape, (min(block, shape[0]), min(block, shape[1])), np.int32,
                                Path(out_path).stem)
        for k, ((cy0, cy1, cx0, cx1), (wy0, wy1, wx0, wx1)) in enumerate(pairs):
            res = (next(window_results) if window_results is not None
                   else segment_window(np.asarray(source[wy0:wy1, wx0:wx1])))
            lab = np.asarray(res.labels)
            t = res.table
            cy = np.asarray(t["centroid_y"], float) + wy0
            cx = np.asarray(t["centroid_x"], float) + wx0
            own = (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)
            ids = np.asarray(t["label"], np.int64)[own]
            cur = np.asarray(out[wy0:wy1, wx0:wx1])
            if ids.size:
                n = int(lab.max()) + 1
                area = np.bincount(lab.ravel(), minlength=n)
                taken = np.bincount(lab[cur > 0].ravel(), minlength=n)
                ids = ids[taken[ids] < DUPLICATE * area[ids]]
            if ids.size:
                lut = np.zeros(int(lab.max()) + 1, np.int32)  # the output's dtype
                lut[ids] = np.arange(next_label, next_label + ids.size)
                new = lut[lab]
                free = (cur == 0) & (new > 0)
                cur[free] = new[free]
                out[wy0:wy1, wx0:wx1] = cur
                by_label = np.full(len(lut), np.nan)
                by_label[np.asarray(t["label"], np.int64)] = np.asarray(
                    t.get("probability", np.full(len(t["label"]), np.nan)), float)
                if next_label + ids.size > len(prob):
                    prob = np.concatenate([prob, np.full(max(len(prob), ids.size), np.nan)])
                prob[lut[ids]] = by_label[ids]
                next_label += ids.size
            res = lab = cur = new = free = area = taken = None  # before the next window is read
            _trim_heap()
            if progress is not None:
                progress((k + 1) / len(pairs), f"block {k + 1}/{len(pairs)}")
        table = object_table(out, next_label - 1, prob, block)
    return table


def object_table(labels, n: int, prob: dict, step: int) -> dict:
    """label, area, centroid_y, centroid_x, probability of labels 1..n of the (lazy) 2-D ``labels``
    (``prob``: by label, a dict or an array indexed by label), read in ``step x step`` chunks (memory set by the chunk, not the image's width); objects left
    with no pixel are dropped."""
    area = np.zeros(n + 1)
    sy = np.zeros(n + 1)
    sx = np.zeros(n + 1)
    h, w = labels.shape
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            lab = np.asarray(labels[y0:y0 + step, x0:x0 + step])
            yy, xx = np.nonzero(lab)
            v = lab[yy, xx].astype(np.int64)
            area += np.bincount(v, minlength=n + 1)
            sy += np.bincount(v, weights=yy + y0, minlength=n + 1)
            sx += np.bincount(v, weights=xx + x0, minlength=n + 1)
            lab = yy = xx = v = None
            _trim_heap()
    keep = np.nonzero(area[1:])[0] + 1
    if isinstance(prob, dict):
        p = np.array([prob.get(int(i), np.nan) for i in keep])
    else:  # an array by label
        p = np.where(keep < len(prob), np.asarray(prob)[np.minimum(keep, len(prob) - 1)], np.nan)
    return {"label": keep, "area": area[keep], "centroid_y": sy[keep] / area[keep],
            "centroid_x": sx[keep] / area[keep], "probability": p}


def segment_files_blockwise(files, out_dir, model=None, *, block: int = 2048, overlap: int | None = None,
                            overwrite: bool = False, quiet: bool = False, registry=None, fmt: str = "zarr",
                            **segment_kwargs):
    """The ``segment --blocks N`` command: each 2-D image (file, zarr array or OME-Zarr image) into
    ``DIR/<stem>.zarr`` (OME-Zarr labels; ``fmt="tif"``: a tiled ``DIR/<stem>.tif``) and
    ``DIR/<stem>.csv`` (objects), the plain command's names otherwise; done images skipped, a
    failed image reported and the batch goes on. Returns ``(done, skipped, failed, model name)``."""
    import sys

    from ..cli.progress import TerminalProgress
    from ..cli.segment import plan_outputs
    from ..core.registry import ModelRegistry
    from .large import expand, labels_path, segment_one

    if block < 16:
        raise ValueError(f"--blocks must be 16 or more pixels (got {block})")
    registry = registry or ModelRegistry()
    card = registry.get(model) if model else registry.default("segment")
    files = expand([files] if isinstance(files, (str, Path)) else files)
    if not files:
        raise ValueError("no input images found")
    out = Path(out_dir)
    plan = [(labels_path(tif, fmt), csv) for tif, csv in plan_outputs(files, out)]
    inputs = {f.resolve() for f in files}
    for lpath, _ in plan:
        if lpath.resolve() in inputs:
            raise ValueError(f"the output {lpath} would overwrite the input of that name; choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    done = skipped = failed = 0
    for i, (f, (lpath, csv)) in enumerate(zip(files, plan)):
        if lpath.exists() and csv.exists() and not overwrite:
            skipped += 1
            continue
        bar = TerminalProgress(f"[{i + 1}/{len(files)}] {f.name}", enabled=not quiet)
        try:
            try:
                table = segment_one(f, lpath, csv, card, block, overlap, progress=bar, **segment_kwargs)
            finally:
                bar.close()
        except Exception as exc:  # this image fails; the batch goes on
            print(f"napari-cnnvision: {f}: {str(exc).strip() or type(exc).__name__}", file=sys.stderr)
            failed += 1
            continue
        if not quiet:
            print(f"{f.name}: {len(table['label'])} objects -> {lpath}", file=sys.stderr)
        done += 1
    print(f"segmented {done}, skipped {skipped} (already done), failed {failed}; model {card.name} (blocks of {block})")
    return done, skipped, failed, card.name
