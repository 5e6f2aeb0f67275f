"""Putting results into the viewer: find, replace in place, add or drop the plugin's own layers.

A result layer is found by the mark in its metadata (:data:`~..layers.common.RESULT_KEY`): its
``kind``, the image it was made from (``source``) and the ``model``. A user's layer of the same
name is never touched.
"""
from __future__ import annotations

from ..layers.common import RESULT_KEY


def result_meta_of(layer) -> dict:
    meta = getattr(layer, "metadata", None) or {}
    return meta.get(RESULT_KEY) or {}


def find_result(viewer, kind: str, source: str, model: str):
    """The plugin's ``kind`` layer made from image ``source`` with ``model``, or None."""
    for lyr in viewer.layers:
        m = result_meta_of(lyr)
        if m.get("kind") == kind and m.get("source") == source and m.get("model") == model:
            return lyr
    return None


def drop_result(viewer, kind: str, source: str, model: str) -> None:
    """Remove the plugin's ``kind`` layers of (``source``, ``model``), if any."""
    while (lyr := find_result(viewer, kind, source, model)) is not None:
        viewer.layers.remove(lyr)


#: kwargs that can change on an existing layer (the others, like ``name``, stay the user's)
_UPDATABLE = ("features", "metadata", "scale", "translate")


def put_result(viewer, data, kwargs: dict, layer_type: str, existing=None, attrs: dict | None = None):
    """Replace ``existing``'s data (and features, metadata, geometry) in place, or add a new layer
    from the LayerDataTuple parts; ``attrs`` are set on the layer afterwards. Returns the layer."""
    if existing is not None and existing._type_string == layer_type:
        existing.data = data
        for key in _UPDATABLE:
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        layer = existing
    else:
        if existing is not None:
            viewer.layers.remove(existing)
        from napari.layers import Layer

        layer = viewer.add_layer(Layer.create(data, kwargs, layer_type))
    for key, value in (attrs or {}).items():
        setattr(layer, key, value)
    return layer
