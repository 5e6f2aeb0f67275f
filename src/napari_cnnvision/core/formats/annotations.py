"""The one format-neutral, in-memory annotation type that every reader returns and every writer takes.

An :class:`ImageAnnotations` is one image's boxes in the plugin's **(y0, x0, y1, x1)** pixel
order (0-based, exclusive ends; see :mod:`napari_cnnvision.core.formats`, the one place where
the files' (x, y) order is swapped), one class *name* per box, optional scores, an optional
``frame`` per box (a stack) and an optional instance label image (COCO polygons / RLE, mask TIFFs).
An :class:`AnnotationSet` is a dataset: a list of them plus the class list.
Readers and writers of each format live beside this module (``coco``, ``yolo``, ``voc``,
``csv_boxes``, ``masks``); :func:`read_any` / :func:`write_as` pick one by the source's look.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import box_areas
from .voc import AnnotationError

FORMATS = ("coco", "yolo", "voc", "csv")


@dataclass
class ImageAnnotations:
    """One image: ``image`` its file name (a base name, or a path relative to the dataset's images
    folder), ``size`` (height, width) when known, ``boxes`` ``(n, 4)`` (y0, x0, y1, x1), ``classes``
    one name per box, ``scores`` (or None), ``frame`` (or None) and ``labels`` (an instance label
    image of ``size``, or None)."""

    image: str
    size: tuple[int, int] | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    frame: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.classes = [str(c) for c in self.classes]
        if len(self.classes) != n:
            raise ValueError(f"{self.image}: {n} boxes but {len(self.classes)} class names")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, np.float64).reshape(n)
        if self.frame is not None:
            self.frame = np.asarray(self.frame, np.int64).reshape(n)
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def stem(self) -> str:
        return Path(self.image).stem


@dataclass
class AnnotationSet:
    """A dataset: the images' annotations (in order), the class list, and what the reader noticed."""

    images: list[ImageAnnotations]
    class_names: list[str]
    warnings: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        known = list(dict.fromkeys(str(c) for c in self.class_names))
        for a in self.images:  # classes used but not listed are appended, in order of appearance
            known.extend(c for c in dict.fromkeys(a.classes) if c not in known)
        self.class_names = known

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_boxes(self) -> int:
        return sum(len(a) for a in self.images)

    def counts(self) -> dict[str, int]:
        """Boxes per class name (classes with none included)."""
        c = {n: 0 for n in self.class_names}
        for a in self.images:
            for n in a.classes:
                c[n] += 1
        return c

    def class_ids(self, ann: ImageAnnotations) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.class_names)}
        return np.array([index[c] for c in ann.classes], np.int64)

    def summary(self) -> str:
        """``"3 images, 12 boxes (RBC 10, WBC 2)"``."""
        per = ", ".join(f"{n} {k}" for n, k in self.counts().items())
        return f"{len(self)} images, {self.n_boxes} boxes" + (f" ({per})" if per else "")


def number(v: float) -> str:
    """A coordinate as text: an integer when it is one, else up to 6 decimals (no float noise)."""
    v = float(v)
    r = round(v)
    if abs(v - r) < 1e-9:
        return str(int(r))
    return f"{v:.6f}".rstrip("0").rstrip(".")


def check_boxes(boxes: np.ndarray, size, where: str, warnings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes read from a file: negative sizes are an error; parts outside the image (when its size is
    known) are clipped and boxes left with no area dropped, each with a warning. Returns the
    (clipped) boxes and the mask of boxes kept."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise AnnotationError(f"{where}: a box coordinate is not a finite number")
    neg = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if neg.any():
        raise AnnotationError(f"{where}: box {int(np.flatnonzero(neg)[0]) + 1} has a negative width or height")
    if size is not None and len(boxes):
        h, w = size
        clipped = np.column_stack([np.clip(boxes[:, 0], 0, h), np.clip(boxes[:, 1], 0, w),
                                   np.clip(boxes[:, 2], 0, h), np.clip(boxes[:, 3], 0, w)])
        moved = int((np.abs(clipped - boxes) > 1e-9).any(axis=1).sum())
        if moved:
            warnings.append(f"{where}: {moved} box(es) reaching outside the {h}x{w} image clipped to it")
        boxes = clipped
    keep = box_areas(boxes) > 0
    if (~keep).any():
        warnings.append(f"{where}: {int((~keep).sum())} box(es) with zero width or height dropped")
    return boxes, keep


def subset(ann: ImageAnnotations, keep: np.ndarray) -> ImageAnnotations:
    """``ann`` with only the boxes where ``keep`` is true."""
    keep = np.asarray(keep, bool)
    return ImageAnnotations(ann.image, ann.size, ann.boxes[keep], [c for c, k in zip(ann.classes, keep) if k],
                            None if ann.scores is None else ann.scores[keep],
                            None if ann.frame is None else ann.frame[keep], ann.labels)


def split_frames(ds: AnnotationSet) -> AnnotationSet:
    """One image per frame for formats without a frame field (YOLO, VOC): a stack's boxes of frame
    ``k`` go to ``<stem>_t<k>``; images without frames stay as they are."""
    out = []
    for a in ds.images:
        if a.frame is None or not len(a):
            out.append(a)
            continue
        p = Path(a.image)
        for k in np.unique(a.frame):
            part = subset(a, a.frame == k)
            part.frame, part.labels = None, None
            part.image = str(p.with_name(f"{p.stem}_t{int(k):04d}{p.suffix}"))
            out.append(part)
    return AnnotationSet(out, list(ds.class_names), list(ds.warnings), ds.source)


# --- images beside the annotations -----------------------------------------------------------------

def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file without decoding its pixels where the format allows."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as t:
                shape = t.series[0].shape
                axes = t.series[0].axes
            iy, ix = axes.find("Y"), axes.find("X")
            return (int(shape[iy]), int(shape[ix])) if iy >= 0 and ix >= 0 else (int(shape[0]), int(shape[1]))
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except (OSError, ValueError, IndexError) as exc:
        raise AnnotationError(f"cannot read the size of the image {path}: {exc}") from exc


def index_images(folder: str | Path | None) -> dict[str, Path]:
    """Image files under ``folder`` (recursively) by base name and by stem (first found wins)."""
    from ..images import IMAGE_SUFFIXES

    out: dict[str, Path] = {}
    if folder is None or not Path(folder).is_dir():
        return out
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in p.parts[-2:]):
            out.setdefault(p.name, p)
            out.setdefault(p.stem, p)
    return out


def find_image(index: dict[str, Path], name: str) -> Path | None:
    """The image for an annotation's file name (its base name, else its stem)."""
    p = Path(name)
    return index.get(p.name) or index.get(p.stem)


def fill_sizes(ds: AnnotationSet, images: str | Path | None, need: bool = False) -> None:
    """Take each image's size from its file in ``images`` where the annotation lacks it; with
    ``need`` an image without a size (and no file) is an error."""
    index = index_images(images)
    for a in ds.images:
        if a.size is None:
            f = find_image(index, a.image)
            if f is not None:
                a.size = image_size(f)
            elif need:
                where = f" in {images}" if images else " (give the images folder: --images DIR)"
                raise AnnotationError(f"the size of {a.image} is needed but unknown: no such image{where}")


# --- any format: recognize, read, write ----------------------------------------------------------------

OUTPUT_NAMES = {"coco": "annotations.json", "csv": "boxes.csv"}


def detect_format(path: str | Path) -> tuple[str, Path]:
    """``(format, path to read)`` for a COCO JSON file, a VOC XML file or folder (also a dataset folder
    with ``annotations/*.xml``), a YOLO folder, a boxes CSV or a masks folder; else an AnnotationError."""
    from .csv_boxes import kind_of
    from .masks import mask_layout
    from .voc import is_voc_file
    from .yolo import is_yolo_folder

    path = Path(path)
    if path.is_file():
        suf = path.suffix.lower()
        if suf == ".json":
            return "coco", path
        if suf == ".xml" and is_voc_file(path):
            return "voc", path
        if suf == ".csv" and kind_of(path) == "boxes":
            return "csv", path
        raise AnnotationError(f"{path}: not a COCO JSON, Pascal VOC XML or boxes CSV file")
    if path.is_dir():
        if is_yolo_folder(path):
            return "yolo", path
        for d in (path, path / "annotations"):
            if d.is_dir() and any(is_voc_file(p) for p in sorted(d.glob("*.xml"))[:5]):
                return "voc", d
        if (path / "annotations.json").is_file():
            return "coco", path / "annotations.json"
        if mask_layout(path) is not None:
            return "masks", path
        raise AnnotationError(f"{path}: not a folder of VOC XMLs, a YOLO folder (labels/ + classes.txt) "
                              "or masks/ beside images/")
    raise AnnotationError(f"no such file or folder: {path}")


def default_images(src: Path, fmt: str) -> Path | None:
    """Where a source's images usually are: ``images/`` beside the file/folder, else the folder itself."""
    base = src if src.is_dir() and fmt in ("yolo", "masks") else src.parent
    for cand in (base / "images", base.parent / "images" if fmt == "voc" else None, base):
        if cand is not None and cand.is_dir():
            return cand
    return None


def read_annotations(src: str | Path, images: str | Path | None = None, masks: bool = True) -> AnnotationSet:
    """Read any supported source (see :func:`detect_format`); sizes missing from the file are taken
    from the images in ``images`` (default: :func:`default_images`)."""
    from . import coco, csv_boxes, voc, yolo
    from . import masks as masks_fmt

    fmt, path = detect_format(src)
    if fmt == "coco":
        ds = coco.read_coco(path, masks=masks)
    elif fmt == "voc":
        ds = voc.read_voc_folder(path, images)
    elif fmt == "yolo":
        ds = yolo.read_yolo(path, images)
    elif fmt == "csv":
        ds = csv_boxes.read_boxes_csv(path, images if images is not None else default_images(path, fmt))
    else:
        ds = masks_fmt.read_masks(path)[0]
    if any(a.size is None for a in ds.images):
        fill_sizes(ds, images if images is not None else default_images(path, fmt))
    ds.source = str(path)
    return ds


def write_annotations(ds: AnnotationSet, fmt: str, out_dir: str | Path, mask_format: str = "rle") -> list[Path]:
    """Write ``ds`` into ``out_dir`` as ``coco`` (annotations.json), ``yolo`` (labels/ + classes.txt),
    ``voc`` (<stem>.xml) or ``csv`` (boxes.csv); every file atomically. Returns the files written."""
    from . import coco, csv_boxes, voc, yolo

    out_dir = Path(out_dir)
    if fmt == "coco":
        return [coco.write_coco(ds, out_dir / OUTPUT_NAMES["coco"], mask_format)]
    if fmt == "yolo":
        return yolo.write_yolo(ds, out_dir)
    if fmt == "voc":
        return voc.write_voc(ds, out_dir)
    if fmt == "csv":
        return [csv_boxes.write_boxes_csv(ds, out_dir / OUTPUT_NAMES["csv"])]
    raise ValueError(f"unknown annotation format {fmt!r}; one of {FORMATS}")


__all__ = ["FORMATS", "OUTPUT_NAMES", "detect_format", "default_images", "read_annotations", "write_annotations", "ImageAnnotations", "AnnotationSet", "number", "check_boxes", "subset", "split_frames",
           "image_size", "index_images", "find_image", "fill_sizes"]
