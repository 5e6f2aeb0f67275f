"""Input checks and result tables shared by the segmentation backends (numpy only)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..core.axes import InputError, check_axes, check_image, guess_axes, split_frames


@dataclass
class SegmentationInput:
    """A checked image with its axes split into frames (T), space and channels (C)."""

    image: np.ndarray
    axes: str
    frame_axes: str  # axes of one frame, e.g. "YX" or "YXC"
    has_t: bool
    has_c: bool
    spatial_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return self.image.shape[0] if self.has_t else 1

    def frame(self, f: int) -> np.ndarray:
        return self.image[f] if self.has_t else self.image

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return self.image.shape[:-1] if self.has_c else self.image.shape


def prepare_input(image, axes: str | None, model_name: str, n_dim: int, n_channels: int) -> SegmentationInput:
    """Check ``image`` against a model with ``n_dim`` spatial axes and ``n_channels`` channels.

    Raises :class:`InputError` with a message that says what to change.
    """
    image = check_image(image)
    warnings_: list[str] = []
    if np.issubdtype(image.dtype, np.floating):
        bad = ~np.isfinite(image)
        if bad.any():
            warnings_.append(f"{int(bad.sum())} NaN/inf pixel values were treated as background")
    axes = check_axes(axes, image.shape) if axes else guess_axes(image.shape, n_dim)
    t_ax, frame_axes = split_frames(axes)
    if len(frame_axes.replace("C", "")) != n_dim:
        raise InputError(f"model {model_name!r} is a {n_dim}D model but the image axes are {axes!r}")
    has_c = "C" in frame_axes
    img_ch = image.shape[-1] if has_c else 1
    if img_ch != n_channels:
        what = "an RGB/multichannel" if img_ch > 1 else "a single-channel"
        want = "a single-channel (grayscale)" if n_channels == 1 else f"a {n_channels}-channel (e.g. RGB)"
        raise InputError(f"model {model_name!r} expects {want} image but got {what} image "
                         f"({img_ch} channels); choose a matching model or convert the image")
    spatial = image.shape[1:] if t_ax else image.shape
    spatial = spatial[:-1] if has_c else spatial
    if min(spatial) < 8:
        raise InputError(f"the image ({'x'.join(map(str, spatial))}) is too small to segment: "
                         "each spatial axis needs at least 8 pixels")
    return SegmentationInput(image, axes, frame_axes, bool(t_ax), has_c, tuple(spatial), warnings_)


def selected_frames(n_frames: int, frames) -> list[int]:
    return list(range(n_frames)) if frames is None else [f for f in frames if 0 <= f < n_frames]


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


def concat_tables(tables: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """uint16 when the labels fit, else uint32."""
    return labels.astype(np.uint16 if labels.max(initial=0) < 2 ** 16 else np.uint32, copy=False)


def offset_labels(labels: np.ndarray, table: dict, offset: int) -> tuple[np.ndarray, dict, int]:
    """Shift a frame's labels (and its table) by ``offset`` so labels are unique across a stack.

    Returns the shifted labels, table and the next offset.
    """
    if offset:
        labels = np.where(labels > 0, labels + offset, 0).astype(labels.dtype, copy=False)
        table = {**table, "label": table["label"] + offset}
    nxt = int(labels.max(initial=0))
    return labels, table, max(offset, nxt)
