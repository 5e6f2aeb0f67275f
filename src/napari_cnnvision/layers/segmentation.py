"""SegmentationResult -> napari Labels (+ optional Shapes) LayerDataTuples."""
from __future__ import annotations

import numpy as np

from ..core.results import SegmentationResult

from .common import RESULT_KEY, result_name  # noqa: F401  (re-exported)


def segmentation_layers(result: SegmentationResult, image_name: str = "image",
                        scale=None, translate=None) -> list[tuple]:
    """Return ``[(labels, kwargs, 'labels'), ...]`` (plus a Shapes tuple when polygons exist).

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
    if result.polygons:
        skw = {"name": f"{name} outlines", "shape_type": "polygon", "edge_color": "yellow",
               "face_color": "transparent", "edge_width": 1,
               "metadata": {RESULT_KEY: {**meta[RESULT_KEY], "kind": "segmentation-outlines"}}}
        if "scale" in kw:
            skw["scale"] = kw["scale"]
        if "translate" in kw:
            skw["translate"] = kw["translate"]
        out.append(([np.asarray(p) for p in result.polygons], skw, "shapes"))
    return out
