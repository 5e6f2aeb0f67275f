"""Localizer inference: the one object of an image, of each frame of a stack, or of each region.

Any 2D image (gray, RGB, RGBA; 8/16-bit or float; any size) is normalized as the card says and
resized to the model's input; the predicted box is mapped back to the image's pixels. Stacks
and time-lapses (``TYX[C]``, or ``ZYX[C]`` given with ``axes``) give one box per processed
frame. ``regions`` (``(y0, x0, y1, x1)`` rectangles in image pixels, each optionally led by a
frame index) are cropped and localized on their own: one box per region (and frame), in image
coordinates.
"""
from __future__ import annotations

import time

import numpy as np

from ...core.axes import InputError, check_axes, check_image, guess_axes, loop_axes
from ...core.normalize import resolve_normalization
from ...core.progress import NULL_PROGRESS
from ...core.registry import CorruptModel, ModelCard, ModelRegistry
from ...core.results import LocalizationResult
from ..common import model_job
from ..frames import frame_indices, run_frames

BATCH = 16


def _parse_regions(regions, n_leading: int, shape: tuple[int, int]) -> list[tuple[int | None, tuple]]:
    """``[(frame or None, (y0, x0, y1, x1) ints clipped to the image))]``; clear errors."""
    out = []
    h, w = shape
    for k, r in enumerate(regions):
        r = np.asarray(r, np.float64).ravel()
        if len(r) == 5:
            if not n_leading:
                raise InputError(f"region {k} names a frame ({r[0]:g}) but the image has no frame axis")
            frame, r = int(r[0]), r[1:]
        elif len(r) == 4:
            frame = None
        else:
            raise InputError(f"region {k}: a region is (y0, x0, y1, x1), optionally led by a frame index; "
                             f"got {len(r)} numbers")
        if not np.isfinite(r).all():
            raise InputError(f"region {k} has non-finite coordinates")
        y0, y1 = sorted((r[0], r[2]))
        x0, x1 = sorted((r[1], r[3]))
        y0, x0 = int(np.floor(max(y0, 0))), int(np.floor(max(x0, 0)))
        y1, x1 = int(np.ceil(min(y1, h))), int(np.ceil(min(x1, w)))
        if y1 - y0 < 2 or x1 - x0 < 2:
            raise InputError(f"region {k} ({r.tolist()}) covers less than 2x2 pixels of the "
                             f"{h}x{w} image")
        out.append((frame, (y0, x0, y1, x1)))
    return out


def _resolve_card(card) -> ModelCard:
    if isinstance(card, (str, bytes)) or hasattr(card, "__fspath__"):
        card = ModelRegistry().get(card)
    if isinstance(card, dict):
        from ..dispatch import card_from_payload

        card = card_from_payload(card)
    if card.task != "localize" or card.backend != "localizer":
        raise InputError(f"model {card.name!r} is a {card.task} model ({card.backend}), not a localizer")
    if not card.path:
        raise CorruptModel(f"the localizer model {card.name!r} has no folder")
    return card


def _box_back(t, b: np.ndarray) -> np.ndarray:
    """Normalized (cx, cy, w, h) boxes predicted on ``dihedral.forward(t, x)`` -> on ``x``."""
    b = b.copy()
    if t.transpose:
        b = b[:, [1, 0, 3, 2]]
    if t.flip_x:
        b[:, 0] = 1 - b[:, 0]
    if t.flip_y:
        b[:, 1] = 1 - b[:, 1]
    return b


def predict_inputs(model, x: np.ndarray, batch_size: int = BATCH, tta: bool = False):
    """``(boxes (n, 4) normalized cx, cy, w, h, probabilities (n, k))`` of prepared inputs
    ``(n, c, h, w)``. ``tta``: the mean over the 4 mirror flips (boxes mapped back before
    averaging); no 90° turns: an image resized to the input changes its aspect ratio, and turned
    it would show objects of another shape than the network was trained on."""
    import torch

    from .. import dihedral

    transforms = [t for t in dihedral.ALL if not t.transpose] if tta else [dihedral.ALL[0]]
    boxes, probs = 0.0, 0.0
    with torch.inference_mode():
        for t in transforms:
            xt = np.ascontiguousarray(dihedral.forward(t, x, y_axis=2))
            bs, ps = [], []
            for i in range(0, len(xt), batch_size):
                out = model(torch.from_numpy(xt[i:i + batch_size]))
                bs.append(out["boxes"].double().numpy())
                ps.append(out["probabilities"].double().numpy())
            boxes = boxes + _box_back(t, np.concatenate(bs))
            probs = probs + np.concatenate(ps)
    return boxes / len(transforms), probs / len(transforms)


def localize(image, card, axes: str | None = None, frames=None, regions=None, progress=NULL_PROGRESS,
             pmin: float | None = None, pmax: float | None = None, tta: bool = False) -> LocalizationResult:
    """The one object of ``image`` (or of each frame / region) with its class: a
    :class:`~napari_cnnvision.core.results.LocalizationResult` with one box per processed
    frame and region, ``(y0, x0, y1, x1)`` in image pixels; ``scores`` is the probability of the
    chosen class, ``probabilities`` all of them.

    ``card``: a model card, card payload, registry name or folder. ``axes``: the image's axis
    order (guessed when ``None``: ``YX``, ``YXC``, ``TYX`` or ``TYXC``); at most one frame axis
    (``T`` or ``Z``). ``frames``: the frame indices to process (default all). ``regions``: see
    the module docstring. ``pmin``/``pmax``: override the card's percentile normalization.
    ``tta``: average over the image's 4 mirror flips (4x the network time).
    """
    from .io import load_model
    from .model import cxcywh_to_yxyx
    from .preprocess import to_input

    t0 = time.perf_counter()
    card = _resolve_card(card)
    norm = resolve_normalization(card.normalization, pmin, pmax, f"model {card.name!r}")
    norm_apply = {k: v for k, v in norm.items() if k != "source"}
    image = check_image(image)
    axes = check_axes(axes, image.shape) if axes else guess_axes(image.shape, 2)
    loop, frame_axes = loop_axes(axes, 2)
    if len(loop) > 1:
        raise InputError(f"the localizer takes at most one frame axis (T or Z); the image axes are {axes!r}")
    if "C" in frame_axes and image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"the localizer takes gray, RGB or RGBA images; this one has {image.shape[-1]} channels")
    warnings: list[str] = []
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        warnings.append(f"{int((~np.isfinite(image)).sum())} NaN/inf pixel values were treated as background")
    spatial = tuple(image.shape[len(loop):len(loop) + 2])
    parsed = _parse_regions(regions, len(loop), spatial) if regions is not None else None
    if parsed is not None and not parsed:
        raise InputError("regions is empty: draw at least one rectangle, or pass regions=None for the whole image")
    progress(0.0, f"loading model {card.name}")
    loaded = load_model(card.path)
    cfg = loaded.config
    indices = frame_indices(image.shape[:len(loop)], frames)
    if not indices:
        raise InputError(f"none of the frames {list(frames)} exists (the stack has {image.shape[0]} frames)")
    timings = {"network_s": 0.0}

    def crops_of(index):
        f = int(index[0]) if index else 0
        return f, ([(None, (0, 0) + spatial)] if parsed is None else [
            (k, box) for k, (fr, box) in enumerate(parsed) if fr is None or fr == f])

    # frames go through the network together, up to BATCH crops at a time (one batch-1 call per
    # frame costs several times more on a busy CPU); a chunk runs when its first frame comes up
    chunks, cur, n_cur = [], [], 0
    for pos, idx in enumerate(indices):
        n = len(crops_of(idx)[1])
        if cur and n_cur + n > BATCH:
            chunks.append(cur)
            cur, n_cur = [], 0
        cur.append(pos)
        n_cur += n
    chunks.append(cur)
    first_of = {c[0]: c for c in chunks}
    ready: dict[int, list] = {}

    def run_chunk(chunk, step):
        items, xs = [], []
        with step.timed("preprocess_s"):
            for pos in chunk:
                step.progress.check()
                f, crops = crops_of(indices[pos])
                plane = image[indices[pos]]
                ready[pos] = []
                for k, (y0, x0, y1, x1) in crops:
                    xs.append(to_input(plane[y0:y1, x0:x1], cfg.input_size, norm_apply, cfg.in_channels))
                    items.append((pos, f, k, (y0, x0, y1, x1)))
        if not xs:
            return
        with step.timed("network_s"):
            nb, pr = predict_inputs(loaded.model, np.stack(xs), tta=tta)
        for (pos, f, k, (y0, x0, y1, x1)), b, p in zip(items, nb, pr):
            h, w = y1 - y0, x1 - x0
            yx = cxcywh_to_yxyx(b[None], h, w)[0]
            yx = np.clip(yx, 0, [h, w, h, w]) + [y0, x0, y0, x0]
            ready[pos].append((f, k, yx, p))

    def one_frame(step):
        if step.position in first_of:
            run_chunk(first_of[step.position], step)
        return ready.pop(step.position)

    describe = (lambda o: ", ".join(f"{loaded.class_names[int(np.argmax(p))]} {p.max():.2f}" for *_, p in o[:3])
                + (" ..." if len(o) > 3 else ""))
    outs = run_frames(indices, one_frame, progress, describe, "frame", timings)
    rows = [r for o in outs for r in o]
    if parsed is not None and not rows:
        warnings.append("no region lies in the processed frames")
    boxes = np.array([r[2] for r in rows], np.float64).reshape(-1, 4)
    probs = np.array([r[3] for r in rows], np.float64).reshape(-1, len(loaded.class_names))
    timings["total_s"] = time.perf_counter() - t0
    return LocalizationResult(
        boxes=boxes, class_ids=probs.argmax(1) if len(probs) else np.zeros(0, np.int64),
        scores=probs.max(1) if len(probs) else np.zeros(0), class_names=list(loaded.class_names), model=card.name,
        image_shape=spatial, frame=np.array([r[0] for r in rows], np.int64), has_frames=bool(loop),
        warnings=warnings, timings=timings, normalization=norm,
        frames=list(dict.fromkeys(int(i[0]) for i in indices)) if loop else None,
        probabilities=probs, region=None if parsed is None else np.array([r[1] for r in rows], np.int64))


predict_job = model_job(localize)


__all__ = ["localize", "predict_job", "predict_inputs"]
