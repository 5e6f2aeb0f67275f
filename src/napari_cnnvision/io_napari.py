"""npe2 readers and writers of annotations (COCO, Pascal VOC, YOLO, boxes CSV, points CSV, mask TIFFs).

The reader takes a COCO JSON file, a VOC XML file or folder, a YOLO folder, a boxes or points CSV,
a folder with ``masks/`` beside ``images/``, or an OME-Zarr labels folder (the block-wise
segmentation's ``<stem>.zarr``: a lazy, multiscale Labels layer, with the object table
``<stem>.csv`` beside it as its features); anything else gives None so that napari tries other
readers. The images are opened when they are found beside the annotations (or in ``images/``).
Writers return the paths they wrote; every file is written atomically. Shapes that are not
rectangles are written as their bounding boxes with a warning.
"""
from __future__ import annotations

from pathlib import Path

from .core.formats.voc import AnnotationError


def _single(path):
    if isinstance(path, (list, tuple)):
        return path[0] if len(path) == 1 else None
    return path


_SNIFFED: dict = {}  # the COCO dict get_reader parsed, by (path, size, mtime): the read does not parse it again


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _what(path: Path) -> str | None:
    """Our kind of source (``coco`` … ``masks``, ``points``) or None; cheap checks only, never raises."""
    from .core.formats import coco
    from .core.formats.annotations import detect_format
    from .core.formats.csv_boxes import kind_of

    try:
        if path.is_dir() and _ome_labels_attrs(path) is not None:
            return "ome-labels"
        if path.is_file() and path.suffix.lower() == ".csv":
            k = kind_of(path)
            return {"boxes": "csv", "points": "points"}.get(k)
        fmt, target = detect_format(path)
        if fmt == "coco":  # a JSON file that is not COCO is not ours; parsed once, kept for the read
            _SNIFFED.clear()
            _SNIFFED[_file_key(target)] = coco.load(target)
        return fmt
    except (AnnotationError, OSError, ValueError):
        return None


def get_reader(path):
    """npe2 reader hook: a function reading ``path`` into layers, or None when it is not ours."""
    p = _single(path)
    if p is None:
        return None
    p = Path(p)
    kind = _what(p)
    if kind is None:
        return None
    return {"points": _read_points, "ome-labels": _read_ome_labels}.get(kind, _read_annotations)


def _ome_labels_attrs(path: Path) -> dict | None:
    """The attributes of the OME-Zarr labels group ``path`` (zarr v2 ``.zattrs`` or v3 ``zarr.json``:
    ``multiscales`` and ``image-label``), or None when it is not one; reads one small JSON file."""
    import json

    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        f = path / name
        if f.is_file():
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            d = d.get(key, {}) if key and isinstance(d, dict) else d
            d = d.get("ome", d) if isinstance(d, dict) else d  # OME-Zarr 0.5 nests them under "ome"
            ok = isinstance(d, dict) and "image-label" in d and d.get("multiscales")
            return d if ok else None
    return None


def _read_ome_labels(path) -> list[tuple]:
    """The labels, read lazily (napari reads the pyramid level it shows); the object table beside
    them (``<stem>.csv`` with a ``label`` column) as the layer's features."""
    import pandas as pd

    from .layers.common import result_meta
    from .scaleout.lazy_layers import open_labels

    p = Path(_single(path))
    data = open_labels(p)
    kw = {"name": p.stem, "multiscale": isinstance(data, list),
          "metadata": result_meta("labels-file", "", str(p))}
    table = p.with_suffix(".csv")
    if table.is_file():
        try:
            features = pd.read_csv(table)
        except (OSError, ValueError) as exc:
            import warnings

            warnings.warn(f"{table.name}: not read as the objects' table ({exc})", UserWarning, stacklevel=2)
        else:
            if "label" in features.columns:
                kw["features"] = features.assign(index=features["label"])
    return [(data, kw, "labels")]


def _found_images(ds, src: Path, fmt: str) -> dict:
    from .core.formats.annotations import default_images, find_image, index_images

    index = index_images(default_images(src, fmt))
    if src.is_dir() and (src / "images").is_dir():
        index = {**index_images(src / "images"), **index}
    found = {}
    for a in ds.images:
        f = find_image(index, a.image)
        if f is not None:
            found[a.image] = f
    return found


def _read_annotations(path) -> list[tuple]:
    from .core.formats.annotations import detect_format, read_annotations
    from .core.formats.masks import read_masks
    from .layers.annotations import annotation_layers

    p = Path(_single(path))
    fmt, target = detect_format(p)
    if fmt == "masks":
        ds, found = read_masks(p)
    else:
        cached = _SNIFFED.pop(_file_key(target), None) if fmt == "coco" else None
        if cached is not None:
            from .core.formats.annotations import default_images, fill_sizes
            from .core.formats.coco import read_coco

            ds = read_coco(cached, source=str(target))
            fill_sizes(ds, default_images(target, fmt))
        else:
            ds = read_annotations(p)
        found = _found_images(ds, target, fmt)
    for w in ds.warnings:
        import warnings

        warnings.warn(w, UserWarning, stacklevel=2)
    return annotation_layers(ds, found, name=p.stem if p.is_file() else p.name)


def _read_points(path) -> list[tuple]:
    import numpy as np
    import pandas as pd

    from .core.formats.csv_boxes import read_points_csv
    from .layers.common import result_meta

    p = Path(_single(path))
    d = read_points_csv(p)
    names = list(dict.fromkeys(d["image"]))
    feats = {"class": pd.Categorical(d["class"])}
    if d["score"] is not None:
        feats["score"] = d["score"]
    pts = d["points"]
    if d["frame"] is not None:
        pts = np.column_stack([d["frame"], pts])
    elif len(names) > 1:
        idx = {n: i for i, n in enumerate(names)}
        pts = np.column_stack([[idx[n] for n in d["image"]], pts])
        feats["image"] = d["image"]
    meta = result_meta("annotations-points", "", str(p), images=[{"name": n, "size": None} for n in names])
    return [(pts, {"name": p.stem, "features": pd.DataFrame(feats), "metadata": meta, "size": 6,
                   "ndim": pts.shape[1] if pts.ndim == 2 and pts.shape[1] else 2}, "points")]


# --- writers -----------------------------------------------------------------------------------------

def _split(layer_data) -> tuple[tuple | None, tuple]:
    """(image layer or None, shapes layer) from npe2's ``[(data, meta, type), ...]``."""
    image = next((ld for ld in layer_data if ld[2] == "image"), None)
    shapes = next(ld for ld in layer_data if ld[2] == "shapes")
    return image, shapes


def _shapes_set(layer_data):
    from .layers.annotations import shapes_to_annotations

    image, (data, meta, _) = _split(layer_data)
    return shapes_to_annotations(data, meta, image)


def _need_sizes(ds, fmt: str):
    missing = [a.image for a in ds.images if a.size is None]
    if missing:
        raise AnnotationError(f"{fmt} needs the image size of {missing[0]}: save the image layer together with the "
                              "shapes layer (select both)")


def write_shapes_coco(path: str, layer_data: list) -> list[str]:
    from .core.formats.coco import write_coco

    ds = _shapes_set(layer_data)
    _need_sizes(ds, "COCO")
    return [str(write_coco(ds, path))]


def write_shapes_voc(path: str, layer_data: list) -> list[str]:
    from .core.formats.annotations import split_frames
    from .core.formats.voc import voc_xml
    from .core.io import atomic_write_text

    ds = split_frames(_shapes_set(layer_data))
    if len(ds.images) != 1:
        raise AnnotationError(f"a VOC XML file holds one image, this layer has {len(ds.images)}: "
                              "use `napari-cnnvision convert` or save as COCO/YOLO")
    return [str(atomic_write_text(path, '<?xml version="1.0" encoding="utf-8"?>\n' + voc_xml(ds.images[0])))]


def write_shapes_csv(path: str, layer_data: list) -> list[str]:
    from .core.formats.csv_boxes import write_boxes_csv

    return [str(write_boxes_csv(_shapes_set(layer_data), path))]


def write_shapes_yolo(path: str, layer_data: list) -> list[str]:
    from .core.formats.yolo import write_yolo

    ds = _shapes_set(layer_data)
    _need_sizes(ds, "YOLO")
    return [str(p) for p in write_yolo(ds, path)]


def write_points_csv(path: str, data, meta: dict) -> list[str]:
    import numpy as np
    import pandas as pd

    from .core.formats.csv_boxes import write_points_csv as write

    pts = np.asarray(data, np.float64).reshape(-1, int(meta.get("ndim") or 2) if np.size(data) else 2)
    feats = pd.DataFrame(meta.get("features")) if meta.get("features") is not None else pd.DataFrame()
    n = len(pts)
    classes = [str(c) for c in feats["class"]] if "class" in feats and len(feats) == n else ["point"] * n
    scores = np.asarray(feats["score"], np.float64) if "score" in feats and len(feats) == n else None
    frame = np.rint(pts[:, 0]).astype(np.int64) if pts.shape[1] > 2 else None
    return [str(write(path, pts[:, -2:], classes, image=meta.get("name") or "", scores=scores, frame=frame))]


def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    from .core.formats.masks import write_mask_tiff

    return [str(write_mask_tiff(path, data))]


def write_labels_coco(path: str, data, meta: dict) -> list[str]:
    from .core.formats.coco import write_coco
    from .layers.annotations import labels_to_annotations

    return [str(write_coco(labels_to_annotations(data, meta), path))]
