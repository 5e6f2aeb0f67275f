"""What every result layer shares: the plugin's metadata mark, names, and the image's geometry."""
from __future__ import annotations

# Key in a layer's metadata that marks layers this plugin made (so re-runs replace only those).
RESULT_KEY = "napari_cnnvision"


def result_name(image_name: str, model: str) -> str:
    return f"{image_name} [{model}]"


def result_meta(kind: str, model: str, source: str, **extra) -> dict:
    """The metadata of a result layer: ``{RESULT_KEY: {"kind", "model", "source", ...}}``."""
    return {RESULT_KEY: {"kind": kind, "model": model, "source": source, **extra}}


def geometry(ndim: int, scale=None, translate=None) -> dict:
    """``scale``/``translate`` kwargs for a layer of ``ndim`` dims from the image layer's
    (the image's trailing axes; a channel axis is not among napari's layer dims)."""
    kw = {}
    if scale is not None:
        kw["scale"] = tuple(scale)[-ndim:]
    if translate is not None:
        kw["translate"] = tuple(translate)[-ndim:]
    return kw
