"""A Pascal VOC detection dataset folder as arrays (numpy + scikit-image, no framework).

Layout (BCCD's): ``images/<id>.jpg``, ``annotations/<id>.xml`` (Pascal VOC),
``splits/<split>.txt`` (one id per line). Boxes come in the plugin's (y0, x0, y1, x1) order
(:mod:`napari_cnnvision.core.formats.voc`); zero-width/height boxes are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.formats.voc import AnnotationError, read_voc
from ...core.images import IMAGE_SUFFIXES, read_image


@dataclass
class DetectionSample:
    name: str  # the image id (file stem)
    image: np.ndarray  # (H, W[, C]) as stored
    boxes: np.ndarray  # (n, 4) y0, x0, y1, x1
    class_ids: np.ndarray  # (n,) indices into the split's class names

    def __iter__(self):  # unpacks as (image, boxes, class_ids)
        return iter((self.image, self.boxes, self.class_ids))


@dataclass
class DetectionSplit:
    """The samples of one split plus its class names; iterates as ``(image, boxes, class_ids)``."""

    samples: list[DetectionSample]
    classes: list[str]
    dropped: int = 0  # zero-width/height boxes left out
    root: str = ""
    split: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return tuple(self.samples[i])

    def __iter__(self):
        return (tuple(s) for s in self.samples)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def truths(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(boxes, class_ids)]`` per image, for :mod:`.evaluate`."""
        return [(s.boxes, s.class_ids) for s in self.samples]

    def counts(self) -> dict[str, int]:
        ids = np.concatenate([s.class_ids for s in self.samples]) if self.samples else np.zeros(0, np.int64)
        c = np.bincount(ids, minlength=len(self.classes))
        return {n: int(k) for n, k in zip(self.classes, c)}


def split_ids(root: str | Path, split: str) -> list[str]:
    path = Path(root) / "splits" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _image_path(root: Path, name: str) -> Path:
    for suf in (".jpg", ".png", ".tif", ".jpeg", ".tiff", ".bmp"):
        p = root / "images" / f"{name}{suf}"
        if p.is_file():
            return p
    hits = [p for p in (root / "images").glob(f"{name}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not hits:
        raise FileNotFoundError(f"no image for {name!r} in {root / 'images'}")
    return hits[0]


def load_split(root: str | Path, split: str = "train", classes: list[str] | None = None,
               images: bool = True) -> DetectionSplit:
    """Load ``split`` of a VOC folder: every image with its boxes and class ids.

    ``classes`` fixes the class order (a box of another class is an error); without it the
    classes are collected in order of first appearance over the split's ids. ``images=False``
    skips reading the pixels (``image`` is then ``None``; for evaluation against predictions
    made elsewhere).
    """
    root = Path(root)
    ids = split_ids(root, split)
    anns = []
    for name in ids:
        ann = read_voc(root / "annotations" / f"{name}.xml")
        anns.append((name, ann))
    names = list(classes) if classes is not None else []
    if classes is None:
        for _, ann in anns:
            names.extend(c for c in dict.fromkeys(ann.classes) if c not in names)
    samples, dropped = [], 0
    for name, ann in anns:
        img = read_image(_image_path(root, name)) if images else None
        if img is not None and ann.shape is not None and tuple(img.shape[:2]) != ann.shape:
            raise AnnotationError(f"{ann.path}: <size> {ann.shape[1]}x{ann.shape[0]} does not match the image "
                                  f"({img.shape[1]}x{img.shape[0]})")
        samples.append(DetectionSample(name, img, ann.boxes, ann.class_ids(names)))
        dropped += ann.dropped
    warnings_ = [f"{dropped} zero-width/height box(es) dropped"] if dropped else []
    return DetectionSplit(samples, names, dropped, str(root), split, warnings_)


__all__ = ["DetectionSample", "DetectionSplit", "load_split", "split_ids"]
