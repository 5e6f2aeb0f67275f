"""Instance masks as label TIFFs (0 = background, one integer per object): a folder of them beside a
folder of images (``masks/<stem>.tif`` + ``images/<stem>.*``, the layout StarDist and cellpose train
from), and label images <-> boxes (:func:`from_labels`).

Written labels are uint16, or uint32 when an object's label is above 65535.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .annotations import AnnotationSet, ImageAnnotations, find_image, index_images
from .voc import AnnotationError

MASK_DIRS = ("masks", "labels")
TIFF_SUFFIXES = (".tif", ".tiff")


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint16, or uint32 when the largest label needs it (negative or non-integer labels are an error)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub":
        raise AnnotationError(f"labels must be integers, not {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise AnnotationError("labels must not be negative")
    top = int(labels.max()) if labels.size else 0
    if top > np.iinfo(np.uint32).max:
        raise AnnotationError(f"label {top} does not fit in uint32")
    return np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def write_mask_tiff(path: str | Path, labels) -> Path:
    """A label image as a TIFF (uint16 or uint32), atomically."""
    from ..io import write_tiff

    labels = np.asarray(labels)
    return write_tiff(path, labels.astype(label_dtype(labels), copy=False))


def _tiffs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith("."))


def mask_layout(path: str | Path) -> tuple[Path, Path | None] | None:
    """``(masks folder, images folder or None)`` when ``path`` is a folder with ``masks/`` of TIFFs (and
    ``images/``), or is itself a folder of TIFFs named masks/labels with ``../images`` beside it; else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    for d in MASK_DIRS:
        m = path / d
        if m.is_dir() and _tiffs(m) and (path / "images").is_dir():
            return m, path / "images"
    if path.name in MASK_DIRS and _tiffs(path) and (path.parent / "images").is_dir():
        return path, path.parent / "images"
    return None


def from_labels(image: str, labels: np.ndarray, class_name: str = "object") -> ImageAnnotations:
    """A label image -> its objects' boxes (y0, x0, y1, x1) of class ``class_name``, labels renumbered
    1..n so that label ``k + 1`` is box ``k`` (the :class:`ImageAnnotations` convention)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise AnnotationError(f"{image}: a 2-D label image is needed, not shape {labels.shape}")
    label_dtype(labels)
    values = np.unique(labels)
    values = values[values != 0]
    lut = np.zeros(int(values.max()) + 1 if len(values) else 1, np.uint32)
    lut[values] = np.arange(1, len(values) + 1)
    seq = lut[labels].astype(np.uint16 if len(values) < 65535 else np.uint32)
    boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(seq) if s is not None]
    return ImageAnnotations(image, labels.shape, np.array(boxes, np.float64).reshape(-1, 4),
                            [class_name] * len(boxes), labels=seq)


def read_masks(path: str | Path, class_name: str = "object") -> tuple[AnnotationSet, dict[str, Path]]:
    """A masks folder (see :func:`mask_layout`) -> the set (one entry per label TIFF, boxes from the
    labels, ``image`` the matching image's file name) and ``{entry image: image file}`` where found."""
    from ..images import read_image

    layout = mask_layout(path)
    if layout is None:
        raise AnnotationError(f"{path}: not a folder with masks/ (label TIFFs) beside images/")
    masks_dir, images_dir = layout
    index = index_images(images_dir)
    out, found, warnings = [], {}, []
    for f in _tiffs(masks_dir):
        labels = read_image(f)
        img = find_image(index, f.name)
        name = img.name if img is not None else f.name
        if img is None:
            warnings.append(f"{f.name}: no image {f.stem}.* in {images_dir}")
        else:
            found[name] = img
        out.append(from_labels(name, labels, class_name))
    return AnnotationSet(out, [class_name] if out else [], warnings, str(path)), found


__all__ = ["label_dtype", "write_mask_tiff", "mask_layout", "from_labels", "read_masks"]
