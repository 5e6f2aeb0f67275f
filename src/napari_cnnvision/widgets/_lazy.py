"""Large lazy image layers (dask, zarr, OME-Zarr pyramids) in the Segment and Detect widgets.

A layer whose full-resolution data is lazy and larger than
:func:`~..scaleout.large.block_threshold` pixels per plane (the command line's threshold,
``NAPARI_CNNVISION_BLOCK_PIXELS``) is never loaded whole: a thread of
napari's process reads it one block at a time and runs each block as a job in the compute worker
(:mod:`..scaleout.lazy_layers`, :mod:`..scaleout.lazy_detect`), with progress per block; Cancel
ends it between blocks (a second Cancel at once). A smaller lazy layer is loaded and runs as usual.

A lazy *stack* (a frame axis first) in the Localize widget is read one frame at a time, each frame
a job of its own (:func:`frames_task`), so only one frame is in memory whatever the stack's length.
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


def is_lazy_stack(layer, n_frames: int | None) -> bool:
    """True for a stack layer (``n_frames`` not None) whose full-resolution data is lazy."""
    return n_frames is not None and lazy_layers.is_lazy(full_data(layer))


def frames_task(layer, job: str, kwargs: dict, todo: list[tuple[int, list | None]]):
    """``task(ctx)``: each ``(frame, crops)`` of ``todo`` read alone from the lazy stack layer and
    run as the job ``job`` with ``kwargs`` on that one plane (``axes`` YX or YXC); ``crops``:
    ``[(region index, (y0, x0, y1, x1)), ...]`` given to the job as its ``regions`` (None: the
    whole plane). The frames' results merged into one stack result as a whole-stack job gives it
    (``frame``: the stack's frame index, ``region``: the index among the caller's regions)."""
    import dataclasses

    import numpy as np

    from ._boxes_widget import concat

    data = full_data(layer)
    axes = "YXC" if layer.rgb else "YX"
    n = len(todo)

    def task(ctx):
        out, took, warnings = None, 0.0, []
        for i, (f, crops) in enumerate(todo):
            ctx.check()
            kw = dict(kwargs, image=lazy_layers.load(data[f]), axes=axes)
            if crops is not None:
                kw["regions"] = [list(box) for _, box in crops]
            res = ctx.run(job, kw, (i / n, (i + 1) / n), prefix=f"frame {f} ({i + 1}/{n}): ")
            region = None
            if crops is not None:
                region = np.array([crops[int(j)][0] for j in res.region], np.int64)
            res = dataclasses.replace(res, frame=np.full(len(res.boxes), f, np.int64), has_frames=True,
                                      frames=[int(f)], region=region)
            took += res.timings.get("total_s", 0.0)
            warnings += [w for w in res.warnings if w not in warnings]
            out = res if out is None else concat(out, res)
        out.warnings, out.timings = warnings, {"total_s": took}
        return out

    return task
