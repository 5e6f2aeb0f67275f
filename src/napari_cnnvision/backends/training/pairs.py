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
            raise InputError(f"{p.name or f'pair {i + 1}'}: segmentation needs a label image")
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


# -- validation pairs given apart (instead of the automatic split) -----------------------------------
def check_val_pairs(val_pairs) -> list[TrainPair] | None:
    """``None``: the automatic split; else the validation pairs (at least one)."""
    if val_pairs is None:
        return None
    val_pairs = list(val_pairs)
    if not val_pairs:
        raise InputError("no validation data: give at least one image with its annotation (or leave the "
                         "validation out for an automatic split)")
    return val_pairs


def one_or_stack(x):
    """A one-frame stack as its frame (the builders take YX / TYX)."""
    return x if x is None or len(x) > 1 else x[0]


def _val(fn, *args, **kwargs):
    """``fn(...)`` with its InputError led by "validation data: " (which pairs it is about)."""
    try:
        return fn(*args, **kwargs)
    except InputError as e:
        raise InputError(f"validation data: {e}") from None


def val_label_set(val_pairs, train_stack: np.ndarray):
    """The validation pairs' crops (every valid region), as a :class:`.segmentation.SegmentationSet`
    whose training part is the validation data; ``train_stack``: the training (T, H, W[, C]) stack."""
    from .segmentation import segmentation_set

    image, labels, valid = _val(stack_label_pairs, val_pairs)
    chans = [1 if s.ndim == 3 else s.shape[-1] for s in (train_stack, image)]
    if chans[0] != chans[1]:
        raise InputError(f"validation data: the images have {chans[1]} channel(s), the training images "
                         f"{chans[0]}; give images of one kind")
    return _val(segmentation_set, one_or_stack(image), one_or_stack(labels), valid=one_or_stack(valid),
                val_fraction=None)


def _class_ids(val_classes: list[str], classes: list[str], base: int) -> np.ndarray:
    """Validation class id (``base``-based, in ``val_classes``) -> the training id of its name."""
    unknown = [c for c in val_classes if c not in classes]
    if unknown:
        raise InputError(f"validation data: class(es) {', '.join(unknown[:5])} are not in the training data "
                         f"({', '.join(classes)})")
    return np.array([0] * base + [classes.index(c) + base for c in val_classes], np.int64)


def val_box_samples(val_pairs, classes: list[str], normalization: dict) -> list[dict]:
    """The validation pairs' detector samples (every valid region), their labels in ``classes``."""
    from .detection import detection_set

    frames, boxes, cls, fr, regions = _val(stack_box_pairs, val_pairs, "detection")
    vs = _val(detection_set, pad_stack(rgb_frames(frames)), boxes, cls, frames=fr, valid_regions=regions,
              val_fraction=None)
    if vs.normalization.get("type") != normalization.get("type"):
        raise InputError("validation data: the images are of another type than the training images (8-bit "
                         "and not); give images of one kind")
    ids = _class_ids(vs.classes, classes, 1)
    return [{**s, "labels": ids[s["labels"]]} for s in vs.train]


def val_frames_set(val_pairs, classes: list[str], frame_shape: tuple):
    """The validation pairs' frames for the localizer (every annotated frame), labels in ``classes``."""
    from .localization import localization_set

    frames, boxes, cls, fr, _ = _val(stack_box_pairs, val_pairs, "localization")
    shapes = {f.shape for f in frames}
    if shapes != {tuple(frame_shape)}:
        raise InputError(f"validation data: the frames have shape(s) {', '.join(map(str, sorted(shapes)[:3]))}, "
                         f"the training frames {tuple(frame_shape)}; localization takes one size")
    vs = _val(localization_set, np.stack(frames), boxes, cls, fr, val_fraction=None)
    return vs, _class_ids(vs.classes, classes, 0)[vs.labels]
