"""A block-wise segmentation (labels in an OME-Zarr folder) -> napari Labels LayerDataTuples that
read the labels lazily: the pyramid's levels as a multiscale layer (napari reads only what it
shows), the object table as the layer's features."""
from __future__ import annotations

from .common import RESULT_KEY, result_name
from .segmentation import outline_layer


def blockwise_meta(res, image_name: str) -> dict:
    """The result layer's metadata: a segmentation result, plus where its labels are."""
    return {RESULT_KEY: {"kind": "segmentation", "model": res.model, "source": image_name,
                         "prob_thresh": res.prob_thresh, "nms_thresh": res.nms_thresh, "tta": res.tta,
                         "blockwise": {"path": str(res.path), "block": res.block, "overlap": res.overlap,
                                       "blocks": res.n_blocks}}}


def blockwise_labels_layers(res, image_name: str = "image", scale=None, translate=None,
                            outlines: bool = False) -> list[tuple]:
    """``[(labels, kwargs, 'labels')]`` of a :class:`~..scaleout.lazy_layers.BlockwiseLabels`,
    plus the outline layer's tuple when ``outlines`` and objects were found; ``scale`` /
    ``translate`` are the image layer's (their last two axes are used)."""
    import pandas as pd

    from ..scaleout.lazy_layers import open_labels

    data = open_labels(res.path)
    multiscale = isinstance(data, list)
    name = result_name(image_name, res.model)
    features = pd.DataFrame({"index": res.table["label"], **res.table})
    meta = blockwise_meta(res, image_name)
    kw = {"name": name, "features": features, "metadata": meta, "multiscale": multiscale}
    if scale is not None:
        kw["scale"] = tuple(scale)[-2:]
    if translate is not None:
        kw["translate"] = tuple(translate)[-2:]
    out = [(data, kw, "labels")]
    if outlines and res.n_objects:
        odata, okw, kind = outline_layer(data, name, meta, kw.get("scale"), kw.get("translate"))
        okw["multiscale"] = multiscale
        out.append((odata, okw, kind))
    return out
