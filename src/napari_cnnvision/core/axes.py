"""Axis-order handling: which axes of an image are frames, space and channels."""
from __future__ import annotations

import numpy as np

VALID = {"YX", "YXC", "ZYX", "ZYXC", "TYX", "TYXC", "TZYX", "TZYXC"}


class InputError(ValueError):
    """The image cannot be processed as given; the message says what to change."""


def guess_axes(shape: tuple[int, ...], model_ndim: int = 2, rgb: bool | None = None) -> str:
    """Guess the axis order of an image for a model with ``model_ndim`` spatial axes.

    ``rgb`` (as napari's Image layer reports it) marks a trailing colour axis.
    """
    nd = len(shape)
    if rgb is None:
        rgb = nd >= 3 and shape[-1] in (3, 4) and shape[-2] > 4
    core = nd - (1 if rgb else 0)
    if model_ndim == 2:
        axes = {2: "YX", 3: "TYX"}.get(core)
    else:
        axes = {3: "ZYX", 4: "TZYX"}.get(core)
    if axes is None:
        raise InputError(
            f"cannot tell the axis order of an image of shape {shape} for a {model_ndim}D model; "
            "pass the axis order with the axes= argument (e.g. axes='YX', 'YXC', 'TYX', 'ZYX' or 'TZYX')")
    return axes + ("C" if rgb else "")


def check_axes(axes: str, shape: tuple[int, ...]) -> str:
    axes = axes.upper()
    if axes not in VALID:
        raise InputError(f"unknown axis order {axes!r}; use one of {sorted(VALID)}")
    if len(axes) != len(shape):
        raise InputError(f"axes {axes!r} do not match an image with {len(shape)} dimensions (shape {shape})")
    return axes


def loop_axes(axes: str, model_ndim: int) -> tuple[str, str]:
    """Split ``axes`` into the leading axes processed one position at a time and the axes
    one model call sees: ``('T', 'YXC')`` for 'TYXC'; a 2D model on a Z stack works slice
    by slice, so 'TZYX' gives ``('TZ', 'YX')``; a 3D model keeps Z: ``('T', 'ZYX')``.

    Raises :class:`InputError` when the image has fewer spatial axes than the model.
    """
    spatial = axes.replace("T", "").replace("C", "")
    if len(spatial) < model_ndim:
        raise InputError(f"a {model_ndim}D model needs {model_ndim} spatial axes, but the image axes are {axes!r}")
    n_loop = len(axes.replace("C", "")) - model_ndim
    return axes[:n_loop], axes[n_loop:]


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"images must hold numbers; got dtype {image.dtype}")
    if image.size == 0:
        raise InputError(f"the image is empty (shape {image.shape})")
    return image
