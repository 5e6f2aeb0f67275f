"""napari layers -> training pairs (:class:`~..backends.training.plan.TrainPair`): the only layer
reading of the Train widget. Image + Labels (segmentation), Image + Shapes rectangles with a
``class`` feature (detection; a stack with one rectangle per frame for localization), an optional
Shapes layer of "fully annotated" rectangles; and the automatic pairing of every annotation layer
with its image (a result layer knows its image; else the image whose name the layer's begins
with, else the only image of the same size)."""
from __future__ import annotations

import warnings

import numpy as np

from ..core.axes import InputError
from ..layers.common import RESULT_KEY


def kind_of(layer) -> str:
    return type(layer).__name__


def regions_of(layer):
    """The rectangles of a "fully annotated" Shapes layer as Regions (None: no layer)."""
    if layer is None:
        return None
    from ..backends.training.regions import Region
    from ..layers.annotations import shapes_to_annotations

    if len(layer.data) == 0:
        raise InputError(f"the 'fully annotated' layer {layer.name!r} has no rectangles")
    ds = shapes_to_annotations(layer.data, {"shape_type": layer.shape_type, "name": layer.name, "ndim": layer.ndim})
    a = ds.images[0]
    frames = a.frame if a.frame is not None else np.zeros(len(a.boxes), int)
    return [Region(int(f), int(np.floor(b[0])), int(np.floor(b[1])), int(np.ceil(b[2])), int(np.ceil(b[3])))
            for b, f in zip(a.boxes, frames)]


def labels_pair(img_layer, lab_layer, region_layer=None):
    """An Image + Labels layer (and the optional "fully annotated" rectangles) as a pair."""
    from ..backends.training.plan import TrainPair

    if img_layer is None or lab_layer is None:
        raise InputError("choose an image layer and a Labels layer with your annotation")
    labels = np.asarray(lab_layer.data)
    valid = None
    regions = regions_of(region_layer)
    if regions is not None:
        valid = np.zeros(labels.shape, bool)
        for r in regions:
            if labels.ndim == 2 and r.frame != 0:
                continue
            (valid if labels.ndim == 2 else valid[r.frame])[r.slices] = True
    return TrainPair(np.asarray(img_layer.data), labels=labels, valid=valid,
                     name=f"image '{img_layer.name}' {tuple(np.shape(img_layer.data))} + labels '{lab_layer.name}'")


def boxes_pair(img_layer, shp, region_layer=None, stack: bool | None = None):
    """An Image + Shapes rectangles (``class`` feature) layer as a pair; frames for a stack."""
    from ..backends.training.plan import TrainPair
    from ..layers.annotations import shapes_to_annotations

    if img_layer is None or shp is None:
        raise InputError("choose an image layer and a Shapes layer of rectangles")
    if len(shp.data) == 0:
        raise InputError(f"the Shapes layer {shp.name!r} is empty: draw some rectangles first")
    odd = sum(t != "rectangle" for t in shp.shape_type)
    if odd:
        raise InputError(f"{odd} shape(s) of {shp.name!r} are not rectangles; training takes "
                         "rectangles only (delete or redraw them)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = shapes_to_annotations(shp.data, {"shape_type": shp.shape_type, "features": shp.features,
                                              "name": shp.name, "ndim": shp.ndim})
    if ds.warnings:
        raise InputError(f"{shp.name!r}: {ds.warnings[0]}")
    a = ds.images[0]
    return TrainPair(np.asarray(img_layer.data), boxes=a.boxes, classes=list(a.classes), frames=a.frame,
                     valid=regions_of(region_layer),
                     name=f"image '{img_layer.name}' {tuple(np.shape(img_layer.data))} + rectangles '{shp.name}'")


def _spatial(layer) -> tuple:
    shape = tuple(np.shape(layer.data))
    if kind_of(layer) == "Image" and getattr(layer, "rgb", False):
        shape = shape[:-1]
    return shape


def image_of(ann, images: list):
    """The image layer ``ann`` (a Labels / Shapes layer) annotates, or None."""
    meta = (getattr(ann, "metadata", None) or {}).get(RESULT_KEY) or {}
    by_name = {im.name: im for im in images}
    if meta.get("source") in by_name:
        return by_name[meta["source"]]
    prefixed = [im for im in images if ann.name.startswith(im.name)]
    if prefixed:
        return max(prefixed, key=lambda im: len(im.name))
    if kind_of(ann) == "Labels":
        same = [im for im in images if _spatial(im) == tuple(np.shape(ann.data))]
        if len(same) == 1:
            return same[0]
    elif len(images) == 1:
        return images[0]
    return None


def auto_pairs(layers, kind: str) -> tuple[list[tuple], list[str]]:
    """Every ``kind`` ("Labels" / "Shapes") layer of ``layers`` with its image: ``(pairs, unpaired
    layer names)``. Shapes layers with no rectangle or no ``class`` feature (e.g. "fully annotated"
    layers) and empty Labels layers are left out (and named among the unpaired)."""
    images = [ly for ly in layers if kind_of(ly) == "Image"]
    pairs, unpaired = [], []
    for ly in layers:
        if kind_of(ly) != kind:
            continue
        if kind == "Shapes" and not any(t == "rectangle" for t in ly.shape_type):
            continue
        if kind == "Shapes" and "class" not in getattr(ly, "features", {}):
            unpaired.append(f"{ly.name} (no 'class' feature)")  # e.g. a "fully annotated" layer
            continue
        if kind == "Labels" and not np.any(np.asarray(ly.data)):
            unpaired.append(f"{ly.name} (empty)")
            continue
        im = image_of(ly, images)
        (pairs.append((im, ly)) if im is not None else unpaired.append(ly.name))
    return pairs, unpaired
