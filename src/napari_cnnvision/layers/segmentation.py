"""SegmentationResult -> napari Labels LayerDataTuples (objects, and optionally their outlines)."""
from __future__ import annotations

from ..core.results import SegmentationResult

from .common import RESULT_KEY, result_name  # noqa: F401  (re-exported)

#: Attributes to set on an outline layer once it exists (napari's ``Labels`` takes no ``contour``
#: argument): the objects drawn as 2-pixel outlines.
OUTLINE_STYLE = {"contour": 2}
#: a colour cycle of one colour: every object yellow (a cycle, like napari's default labels colours,
#: is mapped by the same compiled code; a direct label->colour map would compile its own, ~5 s once)
OUTLINE_COLORS = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]


def outline_layer(labels, name: str, meta: dict, scale=None, translate=None) -> tuple:
    """The outlines of ``labels`` as a Labels layer tuple that shares the array (no copy, no
    polygons to build: napari draws each object's contour when it shows a slice).

    ``meta`` is the objects layer's metadata; apply :data:`OUTLINE_STYLE` to the created layer.
    """
    kw = {"name": f"{name} outlines", "colormap": [list(c) for c in OUTLINE_COLORS], "opacity": 1.0,
          "metadata": {RESULT_KEY: {**meta[RESULT_KEY], "kind": "segmentation-outlines"}}}
    if scale is not None:
        kw["scale"] = tuple(scale)
    if translate is not None:
        kw["translate"] = tuple(translate)
    return labels, kw, "labels"


def segmentation_layers(result: SegmentationResult, image_name: str = "image",
                        scale=None, translate=None, outlines: bool = False) -> list[tuple]:
    """Return ``[(labels, kwargs, 'labels')]``, plus the outline layer's tuple when ``outlines``
    and objects were found.

    ``scale``/``translate`` are the image layer's, without a channel axis; the table goes into
    the layer's ``features`` (with the ``index`` column napari uses to map label values).
    """
    import pandas as pd

    name = result_name(image_name, result.model)
    table = {"index": result.table["label"], **result.table}
    features = pd.DataFrame(table)
    meta = {RESULT_KEY: {"kind": "segmentation", "model": result.model, "source": image_name,
                         "prob_thresh": result.prob_thresh, "nms_thresh": result.nms_thresh,
                         "tta": result.tta}}
    kw = {"name": name, "features": features, "metadata": meta}
    if scale is not None:
        kw["scale"] = tuple(scale)[-result.labels.ndim:]
    if translate is not None:
        kw["translate"] = tuple(translate)[-result.labels.ndim:]
    out = [(result.labels, kw, "labels")]
    if outlines and result.n_objects:
        out.append(outline_layer(result.labels, name, meta, kw.get("scale"), kw.get("translate")))
    return out
