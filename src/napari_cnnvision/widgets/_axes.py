"""Which axis orders an image layer can be read with, and the best guess (no Qt here).

A 3-D grayscale stack for a 2-D model is either a time-lapse (TYX: frame by frame) or a
z-stack (ZYX: slice by slice, optionally linked into 3-D objects). The guess uses what the layer
says about itself: its axis labels ("t"/"time" or "z"), else a z-stack when its first axis is
sampled more coarsely than the others, else a z-stack (a time-lapse is one click away).
"""
from __future__ import annotations

NAMES = {"YX": "YX (one image)", "TYX": "TYX (time)", "ZYX": "ZYX (z-stack)", "TZYX": "TZYX (time, z)"}


def axes_choices(ndim: int, rgb: bool, model_ndim: int) -> list[str]:
    """Axis orders (without the colour axis) that fit an ``ndim``-D layer and the model."""
    core = ndim - (1 if rgb else 0)
    if model_ndim == 2:
        return {2: ["YX"], 3: ["ZYX", "TYX"], 4: ["TZYX"]}.get(core, [])
    return {3: ["ZYX"], 4: ["TZYX"]}.get(core, [])


def _first_axis_hint(axis_labels, scale) -> str | None:
    if axis_labels:
        first = str(axis_labels[0]).strip().lower()
        if first in ("t", "time", "frame", "frames"):
            return "T"
        if first in ("z", "depth", "slice", "slices"):
            return "Z"
    if scale is not None and len(scale) >= 3 and abs(float(scale[0]) - float(scale[-1])) > 1e-9 * abs(float(scale[-1])):
        return "Z"  # anisotropic sampling: slices of a volume
    return None


def guess_layer_axes(ndim: int, rgb: bool, model_ndim: int, axis_labels=None, scale=None) -> str | None:
    choices = axes_choices(ndim, rgb, model_ndim)
    if not choices:
        return None
    if len(choices) == 1:
        return choices[0]
    hint = _first_axis_hint(axis_labels, scale)
    for axes in choices:
        if hint is not None and axes.startswith(hint):
            return axes
    return choices[0]


def label(axes: str) -> str:
    return NAMES.get(axes, axes)
