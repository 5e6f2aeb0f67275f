"""Input checks, result tables and frame assembly shared by the segmentation backends (numpy only)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..core.axes import InputError, check_axes, check_image, guess_axes, loop_axes
from ..core.normalize import apply_normalization
from .frames import frame_indices


@dataclass
class SegmentationInput:
    """A checked image with its axes split into leading axes processed one position at a time
    (``loop_axes``: "", "T", "Z" or "TZ"), and the axes one model call sees (``frame_axes``)."""

    image: np.ndarray
    axes: str
    frame_axes: str  # axes of one model call, e.g. "YX", "YXC" or "ZYX"
    loop_axes: str  # leading axes, e.g. "T"; "Z" when a 2D model runs slice by slice
    has_c: bool
    spatial_shape: tuple[int, ...]  # spatial shape of one model call
    warnings: list[str] = field(default_factory=list)
    _norm_memo: tuple | None = field(default=None, repr=False)

    @property
    def has_t(self) -> bool:
        return "T" in self.loop_axes

    @property
    def slice_wise(self) -> bool:
        """A 2D model on a Z stack: each Z slice is one model call."""
        return "Z" in self.loop_axes

    @property
    def leading_shape(self) -> tuple[int, ...]:
        return self.image.shape[:len(self.loop_axes)]

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return self.image.shape[:-1] if self.has_c else self.image.shape

    def indices(self, frames=None) -> list[tuple]:
        """The positions to process; ``frames`` restricts the first leading axis (T, or Z)."""
        return frame_indices(self.leading_shape, frames)

    def processed(self, indices: list[tuple]) -> list[int] | None:
        """The processed positions of the first leading axis, in order (None without one)."""
        return list(dict.fromkeys(int(i[0]) for i in indices)) if self.loop_axes else None

    def group_of(self, index: tuple) -> tuple:
        """The position of the image unit ``index`` belongs to: its Z stack when slice-wise."""
        return index[:-1] if self.slice_wise else index

    def normalized(self, index: tuple, normalization: dict) -> np.ndarray:
        """The model input at ``index``, normalized as ``normalization`` says.

        Slice by slice on a Z stack, the whole stack (of that time point) is normalized at
        once, so all slices share one intensity scale."""
        group = self.group_of(index)
        key = (group, tuple(sorted((k, str(v)) for k, v in normalization.items())))
        if self._norm_memo is None or self._norm_memo[0] != key:
            self._norm_memo = (key, apply_normalization(self.image[group], normalization))
        x = self._norm_memo[1]
        return x[index[len(group):]] if self.slice_wise else x


def prepare_input(image, axes: str | None, model_name: str, n_dim: int, n_channels: int) -> SegmentationInput:
    """Check ``image`` against a model with ``n_dim`` spatial axes and ``n_channels`` channels.

    Raises :class:`InputError` with a message that says what to change. A 2D model accepts
    Z stacks ("ZYX", "TZYX", ...) given with explicit axes; it then runs slice by slice.
    """
    image = check_image(image)
    warnings_: list[str] = []
    if np.issubdtype(image.dtype, np.floating):
        bad = ~np.isfinite(image)
        if bad.any():
            warnings_.append(f"{int(bad.sum())} NaN/inf pixel values were treated as background")
    axes = check_axes(axes, image.shape) if axes else guess_axes(image.shape, n_dim)
    if len(axes.replace("T", "").replace("C", "")) < n_dim:
        raise InputError(f"model {model_name!r} is a {n_dim}D model but the image axes are {axes!r}")
    loop, frame_axes = loop_axes(axes, n_dim)
    has_c = "C" in frame_axes
    img_ch = image.shape[-1] if has_c else 1
    if img_ch != n_channels:
        what = "an RGB/multichannel" if img_ch > 1 else "a single-channel"
        want = "a single-channel (grayscale)" if n_channels == 1 else f"a {n_channels}-channel (e.g. RGB)"
        raise InputError(f"model {model_name!r} expects {want} image but got {what} image "
                         f"({img_ch} channels); choose a matching model or convert the image")
    spatial = image.shape[len(loop):]
    spatial = spatial[:-1] if has_c else spatial
    if min(spatial) < 8:
        raise InputError(f"the image ({'x'.join(map(str, spatial))}) is too small to segment: "
                         "each spatial axis needs at least 8 pixels")
    return SegmentationInput(image, axes, frame_axes, loop, has_c, tuple(spatial), warnings_)


def image_key(x: np.ndarray) -> str:
    """A content hash of an array (for caching network outputs)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((x.shape, x.dtype.str)).encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def object_table(labels: np.ndarray, probs, frame: int | None) -> dict[str, np.ndarray]:
    """One row per object of a 2D/3D label image: label, area, centroid_[z]yx, probability (+ frame).

    ``probs[k - 1]`` is the probability of label ``k``.
    """
    n = int(labels.max()) if labels.size else 0
    lab = np.arange(1, n + 1, dtype=np.int64)
    if n:
        flat = labels.ravel()
        area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
        keep = area > 0
        cents = []
        for ax in range(labels.ndim):  # centroid = per-label mean of each pixel coordinate
            shape = [1] * labels.ndim
            shape[ax] = labels.shape[ax]
            coord = np.broadcast_to(np.arange(labels.shape[ax], dtype=np.float64).reshape(shape), labels.shape)
            cents.append(np.bincount(flat, weights=coord.ravel(), minlength=n + 1)[1:][keep])
        lab, area = lab[keep], area[keep]
        cents = np.stack(cents, axis=1) / area[:, None]
    else:
        area, cents = np.zeros(0), np.zeros((0, labels.ndim))
    out = {"label": lab, "area": area}
    for i, name in enumerate("zyx"[-labels.ndim:]):
        out[f"centroid_{name}"] = cents[:, i].copy()
    out["probability"] = np.asarray(probs, np.float64)[lab - 1] if len(lab) else np.zeros(0)
    if frame is not None:
        out = {"frame": np.full(len(lab), frame, np.int64), **out}
    return out


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """uint16 when the labels fit, else uint32."""
    return labels.astype(np.uint16 if labels.max(initial=0) < 2 ** 16 else np.uint32, copy=False)


@dataclass
class FrameSegmentation:
    """The segmentation of one model call (one frame, or one Z slice for a 2D model)."""

    labels: np.ndarray  # 0 = background, objects 1..n
    probs: np.ndarray  # probs[k - 1]: probability of label k
    polygons: list[np.ndarray] | None = None  # (y, x) outlines in the frame's own coordinates
    cached: bool = False  # the network output came from the cache
    constant: bool = False  # the frame was constant after normalization (nothing to segment)


def describe_frame(out: FrameSegmentation) -> str:
    n = int(np.count_nonzero(np.bincount(out.labels.ravel())[1:])) if out.labels.size else 0
    return f"{n} objects" + (" (cached network output)" if out.cached else "")


def assemble_segmentation(inp: SegmentationInput, indices: list[tuple], outs: list[FrameSegmentation],
                          want_polygons: bool = False, stitch_z: bool = False, stitch_iou: float | None = None,
                          model_name: str = "model"):
    """Put per-frame segmentations together: ``(labels, table, polygons, warnings)``.

    Labels stay unique across the stack (each frame's are shifted past the previous ones);
    polygons get the frame position prepended; for a 2D model on a Z stack, ``stitch_z``
    links overlapping objects of neighbouring slices into one 3D object
    (:func:`~.stitch.stitch_slices`) and the table then has one row per 3D object.
    """
    from .stitch import DEFAULT_IOU, stitch_slices

    labels_out = np.zeros(inp.labels_shape, np.int32)
    offset, parts, polygons = 0, [], ([] if want_polygons else None)
    base: dict[tuple, int] = {}  # group -> the label offset before its first frame
    for idx, out in zip(indices, outs):
        base.setdefault(inp.group_of(idx), offset)
        lab = out.labels.astype(np.int32, copy=False)
        if offset:
            lab = np.where(lab > 0, lab + offset, 0).astype(np.int32, copy=False)
        labels_out[idx] = lab
        parts.append((offset, np.asarray(out.probs, np.float64)))
        if polygons is not None and out.polygons is not None:
            pre = np.asarray(idx, np.float64)
            polygons.extend(p if not len(pre) else np.column_stack([np.broadcast_to(pre, (len(p), len(pre))), p])
                            for p in out.polygons)
        offset = max(offset, int(lab.max(initial=0)))
    probs = np.zeros(offset, np.float64)
    for off, p in parts:
        n = min(len(p), offset - off)
        probs[off:off + n] = p[:n]

    warnings_: list[str] = []
    groups = list(base)
    if inp.slice_wise:
        n_slices = len(indices)
        how = (f"overlapping objects of neighbouring slices (IoU >= {stitch_iou or DEFAULT_IOU:g}, or half of "
               "the smaller inside the other) were stitched into 3D objects") if stitch_z else (
            "each slice's objects are counted on their own (an object in several slices is counted once per "
            "slice); pass stitch_z=True to link them into 3D objects")
        warnings_.append(f"{model_name!r} is a 2D model: the Z stack was segmented slice by slice "
                         f"({n_slices} slices); {how}")
        if stitch_z:
            area = np.bincount(labels_out.ravel(), minlength=offset + 1).astype(np.float64)
            lut_all = np.arange(offset + 1, dtype=np.int64)
            for g in groups:
                stitched, lut = stitch_slices(labels_out[g], stitch_iou or DEFAULT_IOU)
                labels_out[g] = stitched
                moved = np.flatnonzero(lut != np.arange(len(lut)))
                lut_all[moved] = lut[moved]
            # a stitched object's probability: the area-weighted mean of its slices'
            w = np.bincount(lut_all[1:], weights=area[1:] * probs, minlength=offset + 1).astype(np.float64)
            a = np.bincount(lut_all[1:], weights=area[1:], minlength=offset + 1).astype(np.float64)
            probs = np.divide(w, a, out=np.zeros_like(w), where=a > 0)[1:]
    elif stitch_z:
        warnings_.append("stitch_z was ignored: it applies to a 2D model on a Z stack (axes 'ZYX' or 'TZYX')")
    const = [idx for idx, out in zip(indices, outs) if out.constant]
    if const:
        which = ("the image is" if not indices[0] else
                 f"{len(const)} {'slice' if inp.slice_wise else 'frame'}(s) are")
        warnings_.append(f"{which} constant after normalization; no objects there")

    frame_of = (lambda g: int(g[0])) if inp.has_t else (lambda g: None)
    tables = []
    for g in groups:  # per frame on its own label range: cost does not grow with the stack's objects
        lab, b = labels_out[g], base[g]
        t = object_table(np.where(lab > 0, lab - b, 0) if b else lab, probs[b:], frame_of(g))
        t["label"] = t["label"] + b
        tables.append(t)
    if not tables:
        nd = len(inp.labels_shape) - (1 if inp.has_t else 0)
        tables = [object_table(np.zeros((1,) * nd, np.int32), np.zeros(0), 0 if inp.has_t else None)]
    table = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    return compact_labels(labels_out), table, polygons, warnings_


def model_job(run):
    """The compute-worker job of a backend function ``run(image, card, progress=..., **kwargs)``.

    The job's ``model`` is a card payload (:func:`~.dispatch.card_payload`), a card, or a
    registry name / folder path (resolved by ``run``)."""
    def job(progress, image, model, **kwargs):
        from .dispatch import card_from_payload

        card = model if isinstance(model, str) else card_from_payload(model)
        return run(image, card, progress=progress, **kwargs)

    job.__name__ = job.__qualname__ = "predict_job"
    job.__doc__ = f"Worker job running :func:`{run.__module__}.{run.__name__}` (``model``: a card payload, name or path)."
    return job
