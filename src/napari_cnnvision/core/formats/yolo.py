"""YOLO dataset folders <-> :class:`~.annotations.AnnotationSet`.

Layout: ``images/`` (any sub-folders), ``labels/<same sub-folder>/<image stem>.txt`` and the class
list in ``classes.txt`` (one name per line) or ``data.yaml`` (``names:`` a list or ``{id: name}``).
A label line is ``class_id cx cy w h`` (``+ score`` for predictions), the box centre and size
normalized by the image's width (x) and height (y); here they become (y0, x0, y1, x1) pixels with
each image's size. An image without a label file has no boxes; a label file without its image is
an error (its size is unknown).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import boxes_from_xyxy, boxes_to_xyxy
from .annotations import (AnnotationSet, ImageAnnotations, check_boxes, fill_sizes, find_image, index_images,
                          split_frames, subset)
from .voc import AnnotationError

CLASSES_FILE = "classes.txt"


def read_class_list(folder: str | Path) -> list[str] | None:
    """The class names of a YOLO folder (``classes.txt``, else ``data.yaml``/``dataset.yaml``), or None."""
    folder = Path(folder)
    f = folder / CLASSES_FILE
    if f.is_file():
        return [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    for name in ("data.yaml", "dataset.yaml"):
        f = folder / name
        if f.is_file():
            import yaml

            try:
                d = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise AnnotationError(f"{f}: not valid YAML ({exc})") from None
            names = d.get("names") if isinstance(d, dict) else None
            if isinstance(names, dict):
                try:
                    ids = sorted(int(k) for k in names)
                except ValueError:
                    raise AnnotationError(f"{f}: 'names' keys must be class ids") from None
                if ids != list(range(len(ids))):
                    raise AnnotationError(f"{f}: class ids must be 0..{len(ids) - 1}")
                return [str(names.get(i, names.get(str(i)))) for i in ids]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise AnnotationError(f"{f}: no 'names' list")
    return None


def is_yolo_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (folder / "labels").is_dir() and read_class_list(folder) is not None


def parse_label_lines(text: str, n_classes: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Lines ``class cx cy w h [score]`` -> class ids, ``(n, 4)`` normalized (cx, cy, w, h), scores or None."""
    ids, vals, scores = [], [], []
    for ln_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (5, 6):
            raise AnnotationError(f"{where}, line {ln_no}: {len(parts)} fields; a YOLO box line has 5 "
                                  "(class cx cy w h) or 6 (+ score)")
        try:
            c = int(parts[0])
            v = [float(p) for p in parts[1:5]]
            s = float(parts[5]) if len(parts) == 6 else None
        except ValueError:
            raise AnnotationError(f"{where}, line {ln_no}: not numbers: {line.strip()!r}") from None
        if not 0 <= c < n_classes:
            raise AnnotationError(f"{where}, line {ln_no}: class id {c} is not among the {n_classes} classes")
        if v[2] < 0 or v[3] < 0:
            raise AnnotationError(f"{where}, line {ln_no}: negative box width or height")
        ids.append(c)
        vals.append(v)
        scores.append(s)
    has_scores = bool(scores) and all(s is not None for s in scores)
    return (np.array(ids, np.int64), np.array(vals, np.float64).reshape(-1, 4),
            np.array(scores, np.float64) if has_scores else None)


def read_yolo(folder: str | Path, images: str | Path | None = None) -> AnnotationSet:
    """A YOLO folder -> boxes in pixels (each image's size read from its file in ``images``,
    default ``<folder>/images``)."""
    folder = Path(folder)
    names = read_class_list(folder)
    if names is None:
        raise AnnotationError(f"{folder}: no {CLASSES_FILE} or data.yaml with the class names")
    labels_dir = folder / "labels"
    if not labels_dir.is_dir():
        raise AnnotationError(f"{folder}: no labels/ folder")
    images_dir = Path(images) if images is not None else folder / "images"
    index = index_images(images_dir)
    label_files = {p.relative_to(labels_dir).with_suffix(""): p for p in sorted(labels_dir.rglob("*.txt"))
                   if not p.name.startswith(".")}
    image_files = {}
    if images_dir.is_dir():
        for p in index.values():
            image_files.setdefault(p.relative_to(images_dir).with_suffix(""), p)
    warnings: list[str] = []
    pairs, used = [], set()
    for key, lf in label_files.items():  # the image at the same relative path, else one with the same stem
        img = image_files.get(key) or find_image(index, key.name)
        if img is None:
            raise AnnotationError(f"{lf}: no image {key.name}.* in {images_dir} (YOLO boxes need the image's size; "
                                  "give the images folder: --images DIR)")
        used.add(img)
        pairs.append((img, lf))
    pairs += [(img, None) for img in image_files.values() if img not in used]  # images without boxes
    out = []
    for img, lf in sorted(pairs, key=lambda p: str(p[0])):
        name = str(img.relative_to(images_dir)) if images_dir in img.parents else img.name
        ann = ImageAnnotations(name, None)
        fill_sizes(AnnotationSet([ann], names), img.parent, need=True)
        if lf is not None:
            ids, v, scores = parse_label_lines(lf.read_text(encoding="utf-8"), len(names), str(lf))
            h, w = ann.size
            xyxy = np.column_stack([(v[:, 0] - v[:, 2] / 2) * w, (v[:, 1] - v[:, 3] / 2) * h,
                                    (v[:, 0] + v[:, 2] / 2) * w, (v[:, 1] + v[:, 3] / 2) * h])
            boxes, keep = check_boxes(boxes_from_xyxy(xyxy), ann.size, str(lf), warnings)
            ann = subset(ImageAnnotations(name, ann.size, boxes, [names[i] for i in ids], scores), keep)
        out.append(ann)
    return AnnotationSet(out, names, warnings, str(folder))


def label_lines(ann: ImageAnnotations, class_ids: np.ndarray) -> str:
    """The label file text of one image (``%.6f`` normalized values; an empty string for no boxes)."""
    if ann.size is None:
        raise AnnotationError(f"YOLO needs the size of {ann.image}: give the images (--images DIR)")
    h, w = ann.size
    x0, y0, x1, y1 = boxes_to_xyxy(ann.boxes).T
    rows = []
    for k in range(len(ann)):
        vals = [(x0[k] + x1[k]) / 2 / w, (y0[k] + y1[k]) / 2 / h, (x1[k] - x0[k]) / w, (y1[k] - y0[k]) / h]
        line = f"{int(class_ids[k])} " + " ".join(f"{v:.6f}" for v in vals)
        if ann.scores is not None:
            line += f" {float(ann.scores[k]):.6f}"
        rows.append(line)
    return "".join(r + "\n" for r in rows)


def write_yolo(ds: AnnotationSet, out_dir: str | Path) -> list[Path]:
    """``out_dir/labels/<image stem>.txt`` per image (stacks: one per frame) + ``out_dir/classes.txt``,
    each file written atomically. Returns the files written."""
    from ..io import atomic_write_text

    out_dir = Path(out_dir)
    ds = split_frames(ds)
    bad = [n for n in ds.class_names if "\n" in n or "\r" in n or not n.strip()]
    if bad:
        raise AnnotationError(f"class names {bad!r} cannot be written one per line in {CLASSES_FILE}")
    stems: dict[str, str] = {}
    for a in ds.images:
        if a.stem in stems:
            raise AnnotationError(f"{stems[a.stem]} and {a.image} would both write labels/{a.stem}.txt")
        stems[a.stem] = a.image
    texts = [(out_dir / "labels" / f"{a.stem}.txt", label_lines(a, ds.class_ids(a))) for a in ds.images]
    written = [atomic_write_text(p, t) for p, t in texts]  # all texts made first: a bad image writes nothing
    written.append(atomic_write_text(out_dir / CLASSES_FILE, "".join(n + "\n" for n in ds.class_names)))
    return written


__all__ = ["CLASSES_FILE", "read_class_list", "is_yolo_folder", "parse_label_lines", "read_yolo", "label_lines",
           "write_yolo"]
