"""Training pairs -- an image and its annotation, as plain arrays -- and several of them as one
stack for the training-set builders (:mod:`.segmentation`, :mod:`.detection`,
:mod:`.localization`). Pairs of different sizes are zero-padded at the bottom / right; the
padding lies outside every valid region, so it never enters a training crop. numpy only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.axes import InputError
from .regions import Region


@dataclass
class TrainPair:
    """One image and its annotation. Segmentation: ``labels`` (YX / TYX instance labels, 0 not
    annotated); detection / localization: ``boxes`` (n, 4) ``(y0, x0, y1, x1)`` pixels, one class
    name each and, for a stack, one ``frames`` index each. ``valid`` (optional) says where the
    annotation is complete: a mask of the labels' shape, or a list of
    :class:`~.regions.Region` (frame indices of this pair); ``None``: the bounding box of what is
    annotated (``"all"``: the whole image, as for dataset files). ``name``: how the data summary
    names it (e.g. ``"image 'cells' + labels 'my labels'"``)."""

    image: np.ndarray
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    classes: list | None = None
    frames: np.ndarray | None = None
    valid: object = None
    name: str = ""


def _frames_of(pair: TrainPair, stacked: bool) -> list[np.ndarray]:
    img = np.asarray(pair.image)
    return list(img) if stacked else [img]


def pad_stack(frames: list[np.ndarray], fill=0) -> np.ndarray:
    """Frames of (maybe) different heights/widths -> one stack, zero-padded at the bottom/right."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    dtype = np.result_type(*[f.dtype for f in frames])
    out = np.full((len(frames), h, w) + frames[0].shape[2:], fill, dtype)
    for i, f in enumerate(frames):
        out[i, :f.shape[0], :f.shape[1]] = f
    return out


def check_pairs(pairs) -> list[TrainPair]:
    pairs = list(pairs)
    if not pairs:
        raise InputError("no training data: give at least one image with its annotation")
    return pairs


def _same_channels(frames: list[np.ndarray], what: str) -> None:
    chans = {1 if f.ndim == 2 else f.shape[-1] for f in frames}
    if len(chans) > 1:
        raise InputError(f"the {what} mix channel counts ({', '.join(map(str, sorted(chans)))}); give images "
                         "with the same number of channels")


def stack_label_pairs(pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Several pairs as one (T, H, W[, C]) image stack, its labels and (maybe) its valid mask."""
    from .segmentation import _frames

    images, labels, valids, any_valid = [], [], [], False
    for i, p in enumerate(check_pairs(pairs)):
        if p.labels is None:
            raise InputError(f"pair {i + 1}: segmentation needs a label image")
        where = f"{p.name}: " if p.name else ""
        try:
            img, lab = _frames(p.image, p.labels)
        except InputError as e:
            raise InputError(f"{where}{e}") from None
        if isinstance(p.valid, str) and p.valid == "all":
            v = np.ones(lab.shape, bool)
            any_valid = True
        elif p.valid is not None:
            v = np.asarray(p.valid)
            v = v[None] if v.ndim == 2 else v
            if v.shape != lab.shape:
                raise InputError(f"{where}the 'fully annotated' mask has shape {np.shape(p.valid)}, the annotation "
                                 f"{np.shape(p.labels)}")
            v = v != 0
            any_valid = True
        else:
            v = None
        images.extend(list(img))
        labels.extend(list(lab))
        valids.append((v, lab))
    _same_channels(images, "images")
    if any_valid:  # pairs without a mask: the bounding box of their labels per frame
        from .regions import bbox_region

        masks = []
        for v, lab in valids:
            if v is None:
                v = np.zeros(lab.shape, bool)
                for t in range(len(lab)):
                    r = bbox_region(lab[t] > 0)
                    if r is not None:
                        v[t][r.slices] = True
            masks.extend(list(v))
        valid = pad_stack(masks, False)
    else:
        valid = None
    return pad_stack(images), pad_stack([lab.astype(np.int32) for lab in labels]), valid


def stack_box_pairs(pairs, task: str):
    """Several pairs as one stack, boxes, classes, frame per box and valid regions (or None)."""
    frames, boxes, classes, fr, regions, any_valid = [], [], [], [], [], False
    for i, p in enumerate(check_pairs(pairs)):
        where = f"{p.name}: " if p.name else f"pair {i + 1}: "
        if p.boxes is None or p.classes is None:
            raise InputError(f"{where}{task} training needs boxes with class names")
        img = np.asarray(p.image)
        b = np.asarray(p.boxes, np.float64).reshape(-1, 4)
        if len(b) == 0:
            raise InputError(f"{where}no boxes: draw some rectangles first")
        if len(p.classes) != len(b):
            raise InputError(f"{where}{len(b)} boxes but {len(p.classes)} class names")
        stacked = p.frames is not None
        if stacked and (img.ndim < 3 or (img.ndim == 3 and img.shape[-1] in (3, 4))):
            raise InputError(f"{where}boxes have frame indices but the image (shape {img.shape}) is not a stack")
        own = _frames_of(p, stacked)
        f = np.asarray(p.frames, np.int64).reshape(-1) if stacked else np.zeros(len(b), np.int64)
        if len(f) != len(b) or f.min() < 0 or f.max() >= len(own):
            raise InputError(f"{where}boxes lie in frames {sorted(set(f.tolist()))[:10]}, the image has {len(own)}")
        h, w = own[0].shape[:2]
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise InputError(f"{where}some boxes have zero width or height")
        if (b[:, :2] < -0.5).any() or (b[:, 2] > h + 0.5).any() or (b[:, 3] > w + 0.5).any():
            raise InputError(f"{where}some boxes lie outside the image ({w}x{h} pixels)")
        off = len(frames)
        if isinstance(p.valid, str) and p.valid == "all":
            regions.extend(Region(off + t, 0, 0, h, w) for t in sorted(set(f.tolist())))
            any_valid = True
        elif p.valid is not None:
            regions.extend(Region(off + r.frame, r.y0, r.x0, r.y1, r.x1) for r in p.valid)
            any_valid = True
        else:
            for t in sorted(set(f.tolist())):
                s = b[f == t]
                regions.append(Region(off + t, int(np.floor(s[:, 0].min())), int(np.floor(s[:, 1].min())),
                                      int(np.ceil(s[:, 2].max())), int(np.ceil(s[:, 3].max()))))
        frames.extend(own)
        boxes.append(b)
        classes.extend(str(c) for c in p.classes)
        fr.append(f + off)
    return frames, np.concatenate(boxes), classes, np.concatenate(fr), regions if any_valid else None


def rgb_frames(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Gray and colour frames mixed: all as 3 channels."""
    if len({f.ndim for f in frames}) == 1 and len({f.shape[2:] for f in frames}) == 1:
        return frames
    out = []
    for f in frames:
        x = f if f.ndim == 3 else f[..., None]
        out.append(np.repeat(x[..., :1], 3, axis=-1) if x.shape[-1] == 1 else x[..., :3])
    return out
