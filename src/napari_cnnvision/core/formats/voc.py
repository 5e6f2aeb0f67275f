"""Pascal VOC XML annotations -> boxes in the plugin's (y0, x0, y1, x1) order.

VOC stores ``<bndbox>`` as ``xmin, ymin, xmax, ymax``: 1-based, inclusive pixel indices
(``xmin=1, xmax=W`` spans the whole width). The plugin's boxes are 0-based with exclusive
ends, so a VOC box becomes ``(ymin - 1, xmin - 1, ymax, xmax)``. Boxes with zero width or
height in the file (``xmax <= xmin`` or ``ymax <= ymin``; BCCD has two) are dropped and
counted; boxes reaching past the image's ``<size>`` are clipped to it.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import boxes_from_xyxy


class AnnotationError(ValueError):
    """An annotation file cannot be read; the message names the file and the problem."""


@dataclass
class VOCAnnotation:
    """One image's annotation: ``boxes`` ``(n, 4)`` (y0, x0, y1, x1) float pixels, one class
    name per box, ``difficult`` flags, the image ``shape`` (height, width) when the file gives
    it, and ``dropped``: the number of zero-width/height boxes left out."""

    filename: str
    shape: tuple[int, int] | None
    boxes: np.ndarray
    classes: list[str]
    difficult: np.ndarray
    dropped: int = 0
    path: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.boxes)

    def class_ids(self, class_names: list[str]) -> np.ndarray:
        """Index of each box's class in ``class_names`` (an unknown class is an error)."""
        index = {c: i for i, c in enumerate(class_names)}
        unknown = sorted({c for c in self.classes if c not in index})
        if unknown:
            raise AnnotationError(f"{self.path or self.filename}: classes {unknown} are not among {class_names}")
        return np.array([index[c] for c in self.classes], np.int64)


def _number(node, tag: str, where: str) -> float:
    el = node.find(tag)
    if el is None or el.text is None or not el.text.strip():
        raise AnnotationError(f"{where}: <bndbox> lacks <{tag}>")
    try:
        return float(el.text.strip())
    except ValueError:
        raise AnnotationError(f"{where}: <{tag}> is not a number: {el.text.strip()!r}") from None


def _size(root, where: str) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    try:
        w, h = int(float(size.findtext("width", ""))), int(float(size.findtext("height", "")))
    except ValueError:
        raise AnnotationError(f"{where}: <size> needs numeric <width> and <height>") from None
    return (h, w) if h > 0 and w > 0 else None


def parse_voc(text: str | bytes, where: str = "VOC annotation") -> VOCAnnotation:
    """Parse the text of a VOC XML file (see :func:`read_voc`)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise AnnotationError(f"{where}: not valid XML ({exc})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"{where}: not a Pascal VOC annotation (root element <{root.tag}>)")
    shape = _size(root, where)
    xyxy, names, difficult, dropped = [], [], [], 0
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{where}: object {k + 1} has no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"{where}: object {k + 1} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bb, t, f"{where}, object {k + 1}") for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax <= xmin or ymax <= ymin:
            dropped += 1
            continue
        xyxy.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> 0-based, exclusive end
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    boxes = boxes_from_xyxy(np.array(xyxy, np.float64).reshape(-1, 4))
    boxes = np.clip(boxes, 0, None)
    if shape is not None:
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, shape[0])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, shape[1])
    warnings_ = [f"{dropped} box(es) with zero width or height dropped"] if dropped else []
    return VOCAnnotation((root.findtext("filename") or "").strip(), shape, boxes, names,
                         np.array(difficult, bool), dropped, None, warnings_)


def read_voc(path: str | Path) -> VOCAnnotation:
    """Read a Pascal VOC XML file: image name, size, boxes (y0, x0, y1, x1) and class names."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"cannot read the annotation file {path}: {exc}") from exc
    ann = parse_voc(data, str(path))
    ann.path = str(path)
    return ann


__all__ = ["VOCAnnotation", "AnnotationError", "read_voc", "parse_voc"]
