"""Large lazy image layers (dask, zarr, OME-Zarr pyramids) in the Segment and Detect widgets.

A layer whose full-resolution data is lazy and larger than
:func:`~..scaleout.large.block_threshold` pixels per plane (the command line's threshold,
``NAPARI_CNNVISION_BLOCK_PIXELS``) is never loaded whole: a thread of
napari's process reads it one block at a time and runs each block as a job in the compute worker
(:mod:`..scaleout.lazy_layers`, :mod:`..scaleout.lazy_detect`), with progress per block; Cancel
ends it between blocks (a second Cancel at once). A smaller lazy layer is loaded and runs as usual.
"""
from __future__ import annotations

from ..core.axes import InputError
from ..scaleout import lazy_layers


def full_data(layer):
    """The layer's full-resolution data, not loaded."""
    return lazy_layers.full_resolution(layer.data, bool(layer.multiscale))


def blockwise_source(layer):
    """The layer's full-resolution data when it is to be processed block by block, else None."""
    if layer is None:
        return None
    data = full_data(layer)
    try:
        big = lazy_layers.needs_blocks(data, bool(layer.rgb))
    except ValueError as e:  # a bad NAPARI_CNNVISION_BLOCK_PIXELS: a message, not a traceback
        raise InputError(str(e)) from None
    return data if big else None


def describe(layer, what: str, unit: str = "block") -> str:
    """The note shown for a layer that will be processed ``unit`` by ``unit`` ('' for others)."""
    try:
        src = blockwise_source(layer)
    except InputError as e:
        return str(e)
    if src is None:
        return ""
    h, w = lazy_layers.plane_shape(src.shape, bool(layer.rgb))
    return (f"Large lazy image ({w}x{h} pixels per plane): {what} {unit} by {unit}, read as it goes; it is "
            "never loaded whole.")


def check_plane(layer, src, what: str) -> None:
    """An InputError unless the lazy ``src`` is one 2-D image (YX, or YXC for an RGB layer)."""
    core = len(src.shape) - (1 if layer.rgb else 0)
    if core != 2:
        raise InputError(f"the layer {layer.name!r} is a large lazy stack (shape {tuple(src.shape)}); block-wise "
                         f"{what} takes one 2-D image: open one plane (e.g. layer.data[0]) as its own layer")


def start_task(widget, task, on_done, message: str, on_finished=None):
    """Run ``task(ctx)`` (see :meth:`._compute.JobRunner.start_task`) with the widget's busy state,
    progress bar and error reporting, as :meth:`._base.JobWidget.start_job` does for one job."""
    widget.set_busy(True, message)

    def finished():
        widget.set_busy(False)
        if on_finished is not None:
            on_finished()

    return widget.runner.start_task(task, on_progress=widget._on_progress, on_done=on_done,
                                    on_error=widget.report_error, on_finished=finished, name="blockwise",
                                    gentle=True)


def cancel(widget) -> None:
    """Cancel of a block-wise run: the first press ends it after the running block (the worker
    keeps its loaded model), a second one at once."""
    runner = widget.runner
    first = runner.running and runner._gentle and not runner._stop.is_set()
    runner.cancel()
    if first:
        widget.status.value = "Cancelling after this block ... (press Cancel again to stop at once)"
