"""Annotation sets <-> napari layer data (numpy + pandas; no napari import).

Reading: one image gives 2-D layers; several give one Shapes layer with the image index as the
first axis (features ``image``, ``class`` and ``score``), the images as one stack when all are
found and share a shape, and a Labels stack when the file has instance masks. The layer's
metadata lists the images' names and sizes, so writing it back restores them.
Writing: a Shapes layer's rectangles become boxes; other shapes (ellipses, polygons, paths, lines,
rotated rectangles) are written as their bounding box with a warning.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..core.formats.annotations import AnnotationSet, ImageAnnotations
from .common import RESULT_KEY, result_meta
from .detection import PALETTE

KIND = "annotations"
NON_BOX_WARNING = "exported as their bounding boxes"


def _colors(ds: AnnotationSet, classes) -> list[str]:
    index = {n: i for i, n in enumerate(ds.class_names)}
    return [PALETTE[index[c] % len(PALETTE)] for c in classes]


def _corners(boxes: np.ndarray, lead=None) -> list[np.ndarray]:
    y0, x0, y1, x1 = boxes.T
    c = np.stack([np.stack([y0, x0], 1), np.stack([y0, x1], 1), np.stack([y1, x1], 1), np.stack([y1, x0], 1)], 1)
    if lead is not None:
        c = np.concatenate([np.broadcast_to(np.asarray(lead, np.float64)[:, None, None], (len(c), 4, 1)), c], 2)
    return list(c)


def _stack(paths: list, read):
    """A lazy (dask) stack of same-shaped images, or None when their shapes differ."""
    import dask
    import dask.array as da

    first = read(paths[0])
    shapes = {first.shape}
    from ..core.formats.annotations import image_size

    for p in paths[1:]:
        h, w = image_size(p)
        shapes.add((h, w) + first.shape[2:])
    if len(shapes) != 1:
        return None
    parts = [da.from_delayed(dask.delayed(read)(p), shape=first.shape, dtype=first.dtype) for p in paths]
    return da.stack(parts)


def annotation_layers(ds: AnnotationSet, images: dict | None = None, name: str = "annotations") -> list[tuple]:
    """``[(image?), (shapes), (labels?)]`` LayerDataTuples of ``ds``; ``images`` maps an entry's
    ``image`` to its file (those found are opened)."""
    import pandas as pd

    from ..core.images import read_image

    images = images or {}
    multi = len(ds.images) > 1
    framed = not multi and bool(ds.images) and ds.images[0].frame is not None  # one stack (e.g. `detect` output)
    feats = {"class": [], "score": [], "image": []}
    corners: list[np.ndarray] = []
    for i, a in enumerate(ds.images):
        corners.extend(_corners(a.boxes, np.full(len(a), i) if multi else (a.frame if framed else None)))
        feats["class"].extend(a.classes)
        feats["score"].extend(a.scores if a.scores is not None else [np.nan] * len(a))
        feats["image"].extend([a.image] * len(a))
    df = pd.DataFrame({"class": pd.Categorical(feats["class"], categories=list(ds.class_names))})
    if any(a.scores is not None for a in ds.images):
        df["score"] = np.asarray(feats["score"], np.float64)
    if multi:
        df["image"] = feats["image"]
    meta = result_meta(KIND, "", ds.source, class_names=list(ds.class_names),
                       images=[{"name": a.image, "size": list(a.size) if a.size else None} for a in ds.images])
    text = {"string": "{class}", "size": 10, "color": "white", "anchor": "upper_left"}
    ndim = 3 if multi or framed else 2
    out = []
    paths = [images.get(a.image) for a in ds.images]
    if paths and all(p is not None for p in paths):
        data = read_image(paths[0]) if not multi else _stack(paths, read_image)
        if data is not None:
            out.append((data, {"name": paths[0].stem if not multi else f"{name} images"}, "image"))
    skw = {"name": name, "shape_type": "rectangle", "features": df, "edge_color": _colors(ds, feats["class"]) or "yellow",
           "face_color": "transparent", "edge_width": 2, "text": text, "metadata": meta, "ndim": ndim}
    out.append((corners, skw, "shapes"))
    if any(a.labels is not None for a in ds.images):
        sizes = {a.size for a in ds.images}
        if len(sizes) == 1:
            h, w = sizes.pop()
            top = sum(len(a) for a in ds.images)
            lab = np.zeros(((len(ds.images),) if multi else ()) + (h, w), np.uint16 if top < 65535 else np.uint32)
            for i, a in enumerate(ds.images):
                if a.labels is not None:
                    (lab[i] if multi else lab)[...] = a.labels
            out.append((lab, {"name": f"{name} masks", "metadata": result_meta(f"{KIND}-masks", "", ds.source)},
                        "labels"))
    return out


# --- layers -> AnnotationSet -------------------------------------------------------------------------

def _image_info(meta: dict, image: tuple | None) -> tuple[str, tuple | None, list | None]:
    """(name, size of one frame, the reader's image list) for a layer being written."""
    ours = (meta.get("metadata") or {}).get(RESULT_KEY) or {}
    listed = ours.get("images") if ours.get("kind") == KIND else None
    size, name = None, meta.get("name") or "image"
    if image is not None:
        data, imeta = image[0], image[1]
        shape = tuple(np.shape(data))
        size = shape[-3:-1] if imeta.get("rgb") else shape[-2:]
        name = imeta.get("name") or name
    return name, size, listed


def _aligned(c: np.ndarray) -> np.ndarray:
    """Which ``(n, 4, 2)`` corner quadruples are axis-aligned rectangles."""
    eq = lambda a, b: np.abs(a - b) < 1e-6  # noqa: E731
    rows_first = eq(c[:, 0, 0], c[:, 1, 0]) & eq(c[:, 1, 1], c[:, 2, 1]) & eq(c[:, 2, 0], c[:, 3, 0]) \
        & eq(c[:, 3, 1], c[:, 0, 1])
    cols_first = eq(c[:, 0, 1], c[:, 1, 1]) & eq(c[:, 1, 0], c[:, 2, 0]) & eq(c[:, 2, 1], c[:, 3, 1]) \
        & eq(c[:, 3, 0], c[:, 0, 0])
    return rows_first | cols_first


def _bounding_boxes(shapes: list[np.ndarray], types: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(n, 4)`` (y0, x0, y1, x1) bounding boxes, the frame of each (its first coordinate when the
    shapes have more than 2) and how many were not axis-aligned rectangles (vectorized for 4-vertex shapes)."""
    n = len(shapes)
    boxes, frames = np.zeros((n, 4)), np.zeros(n, np.int64)
    four = np.array([s.shape[0] == 4 for s in shapes], bool)
    odd = 0
    if four.any():
        idx = np.flatnonzero(four)
        arr = np.stack([shapes[i] for i in idx])
        yx = arr[:, :, -2:]
        boxes[idx] = np.concatenate([yx.min(axis=1), yx.max(axis=1)], axis=1)
        if arr.shape[2] > 2:
            frames[idx] = np.rint(arr[:, 0, 0])
        rect = np.array([types[i] == "rectangle" for i in idx], bool)
        odd += int((~(rect & _aligned(yx))).sum())
    for i in np.flatnonzero(~four):
        yx = shapes[i][:, -2:]
        boxes[i] = [*yx.min(axis=0), *yx.max(axis=0)]
        frames[i] = int(round(float(shapes[i][0, 0]))) if shapes[i].shape[1] > 2 else 0
        odd += 1
    return boxes, frames, odd


def shapes_to_annotations(data, meta: dict, image: tuple | None = None) -> AnnotationSet:
    """A Shapes layer's data + attributes (+ an image layer's, for the name and size) -> an
    AnnotationSet: rectangles as boxes, other shapes as their bounding boxes (with a warning);
    a leading axis is the frame (or the reader's image index)."""
    import pandas as pd

    name, size, listed = _image_info(meta, image)
    shapes = [np.asarray(s, np.float64) for s in (data or [])]
    types = meta.get("shape_type") or ["rectangle"] * len(shapes)
    types = [types] * len(shapes) if isinstance(types, str) else list(types)
    feats = meta.get("features")
    feats = pd.DataFrame(feats) if feats is not None else pd.DataFrame()
    classes = ([str(c) for c in feats["class"]] if "class" in feats and len(feats) == len(shapes)
               else ["object"] * len(shapes))
    scores = (np.asarray(feats["score"], np.float64) if "score" in feats and len(feats) == len(shapes) else None)
    if scores is not None and np.isnan(scores).any():
        scores = None
    declared = list(((meta.get("metadata") or {}).get(RESULT_KEY) or {}).get("class_names") or [])
    if "class" in feats and hasattr(feats["class"], "cat"):
        declared += [str(c) for c in feats["class"].cat.categories]
    boxes, frames, odd = _bounding_boxes(shapes, types)
    ds_warn = []
    if odd:
        msg = (f"{odd} shape(s) of layer '{meta.get('name')}' that are not axis-aligned rectangles "
               f"(ellipses, polygons, paths, lines, rotated rectangles) {NON_BOX_WARNING}")
        warnings.warn(msg, UserWarning, stacklevel=3)
        ds_warn.append(msg)
    stacked = any(np.shape(s)[1] > 2 for s in shapes) or int(meta.get("ndim") or 2) > 2
    out = []
    if listed and len(listed) > 1 and stacked:  # the reader's images: the leading axis is the image index
        for i, entry in enumerate(listed):
            sel = frames == i
            out.append(ImageAnnotations(entry["name"], tuple(entry["size"]) if entry.get("size") else size,
                                        boxes[sel], [c for c, k in zip(classes, sel) if k],
                                        None if scores is None else scores[sel]))
    else:
        if listed and len(listed) == 1:  # one image read by the reader (a stack when the layer has frames)
            name = listed[0]["name"]
            size = tuple(listed[0]["size"]) if listed[0].get("size") else size
        out.append(ImageAnnotations(name, size, boxes, classes, scores, frames if stacked else None))
    return AnnotationSet(out, declared, ds_warn, meta.get("name") or "")


def labels_to_annotations(data, meta: dict, class_name: str = "object") -> AnnotationSet:
    """A Labels layer (2-D, or a stack: one image per frame ``<name>_t<k>``) -> boxes + instance masks."""
    from ..core.formats.masks import from_labels

    arr = np.asarray(data)
    name = meta.get("name") or "labels"
    if arr.ndim == 2:
        return AnnotationSet([from_labels(name, arr, class_name)], [class_name], [], name)
    planes = arr.reshape((-1,) + arr.shape[-2:])
    return AnnotationSet([from_labels(f"{name}_t{k:04d}", p, class_name) for k, p in enumerate(planes)],
                         [class_name], [], name)


__all__ = ["KIND", "NON_BOX_WARNING", "annotation_layers", "shapes_to_annotations", "labels_to_annotations"]
