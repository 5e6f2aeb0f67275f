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




# --- writing, and a folder of files as a format-neutral AnnotationSet ------------------------------------

def is_voc_file(path: str | Path) -> bool:
    """Whether ``path`` is an XML file whose root element is ``<annotation>`` (read only its start)."""
    path = Path(path)
    if path.suffix.lower() != ".xml" or not path.is_file():
        return False
    try:
        for _, el in ET.iterparse(path, events=("start",)):
            return el.tag == "annotation"
    except (ET.ParseError, OSError):
        return False
    return False


def read_voc_folder(path: str | Path, images: str | Path | None = None):
    """A VOC XML file or a folder of them (sorted) -> :class:`~.annotations.AnnotationSet`; each
    file's dropped zero-area boxes named in its ``warnings``; sizes missing from ``<size>`` taken
    from the image files in ``images`` (default: beside the XMLs, or ``../images``)."""
    from .annotations import AnnotationSet, ImageAnnotations, fill_sizes

    path = Path(path)
    files = sorted(p for p in path.glob("*.xml") if not p.name.startswith(".")) if path.is_dir() else [path]
    if not files:
        raise AnnotationError(f"{path}: no .xml files")
    out, warnings = [], []
    for f in files:
        a = read_voc(f)
        warnings.extend(f"{f.name}: {w}" for w in a.warnings)
        out.append(ImageAnnotations(a.filename or f"{f.stem}.jpg", a.shape, a.boxes, a.classes))
    ds = AnnotationSet(out, [], warnings, str(path))
    if any(a.size is None for a in out):
        folder = path if path.is_dir() else path.parent
        fill_sizes(ds, images if images is not None else
                   (folder.parent / "images" if (folder.parent / "images").is_dir() else folder))
    return ds


def voc_xml(ann, folder: str = "images") -> str:
    """The Pascal VOC XML text of one :class:`~.annotations.ImageAnnotations` (1-based inclusive
    ``xmin = x0 + 1 ... xmax = x1``, the inverse of :func:`parse_voc`; a ``<score>`` when scored)."""
    from .annotations import number

    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = Path(ann.image).name
    if ann.size is not None:
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(ann.size[1])
        ET.SubElement(size, "height").text = str(ann.size[0])
        ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for k in range(len(ann)):
        y0, x0, y1, x1 = (float(v) for v in ann.boxes[k])
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = ann.classes[k]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        if ann.scores is not None:
            ET.SubElement(obj, "score").text = number(ann.scores[k])
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = number(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(ds, out_dir: str | Path) -> list:
    """``out_dir/<image stem>.xml`` per image (stacks: one per frame), each written atomically (UTF-8)."""
    from ..io import atomic_write_text
    from .annotations import split_frames

    ds = split_frames(ds)
    stems: dict = {}
    for a in ds.images:
        if a.stem in stems:
            raise AnnotationError(f"{stems[a.stem]} and {a.image} would both write {a.stem}.xml")
        stems[a.stem] = a.image
    thin = sum(int(((a.boxes[:, 2] - a.boxes[:, 0] <= 1) | (a.boxes[:, 3] - a.boxes[:, 1] <= 1)).sum())
               for a in ds.images)
    if thin:  # 1-based inclusive: xmin == xmax, which VOC readers (ours too) take for a zero-width box
        import warnings

        warnings.warn(f"{thin} box(es) 1 pixel wide or high or less: in VOC they read back as zero-area boxes",
                      UserWarning, stacklevel=2)
    texts = [(Path(out_dir) / f"{a.stem}.xml", voc_xml(a)) for a in ds.images]
    return [atomic_write_text(p, '<?xml version="1.0" encoding="utf-8"?>\n' + t) for p, t in texts]


__all__ = ["VOCAnnotation", "AnnotationError", "read_voc", "parse_voc", "is_voc_file", "read_voc_folder", "voc_xml",
           "write_voc"]
