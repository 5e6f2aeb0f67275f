"""The Localize dock widget: the one object of an image, of each frame, or of each drawn region.

Modes: the whole image (on a stack: the current frame, merged into the stack's result), each
frame of a stack, or each region of a Shapes layer the user drew (rectangles; other shapes are
used as their bounding boxes): one box per region, inside it. The result is a Shapes layer of
rectangles and a Points layer of their centres with ``class``, ``score`` (the chosen class's
probability) and ``p_<class>`` (every class's probability) in ``features`` (``region``: the index
of the drawn shape; ``frame`` for stacks).

A lazy stack layer (dask, zarr) is read one frame at a time, each frame a job of its own
(:func:`._lazy.frames_task`): it is never loaded whole.
"""
from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox

from ..core.axes import InputError
from ..core.registry import ModelRegistry
from . import _lazy
from ._base import fmt_seconds
from ._boxes_widget import BoxesWidget, BoxJob, counts_text, job_image, layer_frames
from ._results import result_meta_of

__all__ = ["LocalizeWidget", "frame_regions", "regions_of"]
WHOLE, CURRENT, EACH = "whole image", "current frame", "each frame of the stack"
REGIONS = "each region of a Shapes layer"
NONE = "(no Shapes layer)"


def frame_regions(regions, n_frames: int) -> list[tuple[int, list[tuple[int, list[float]]]]]:
    """``[(frame, [(region index, (y0, x0, y1, x1)), ...]), ...]``: the frames of a stack of
    ``n_frames`` that hold regions, with theirs -- a region led by a frame index is in that frame,
    one without in every frame (as a whole-stack job reads them); an InputError when none is in the
    stack."""
    out = []
    for f in range(n_frames):
        crops = [(k, list(r[-4:])) for k, r in enumerate(regions) if len(r) == 4 or int(r[0]) == f]
        if crops:
            out.append((f, crops))
    if not out:
        raise InputError(f"none of the regions lies in a frame of the stack (frames 0-{n_frames - 1})")
    return out


def regions_of(shapes, image, n_frames: int | None) -> tuple[list[list[float]], str]:
    """``(regions, note)``: each shape of ``shapes`` as ``(y0, x0, y1, x1)`` in ``image``'s pixels
    (led by its frame index when both are stacks); the note counts shapes that are not rectangles."""
    if not len(shapes.data):
        raise InputError(f"the Shapes layer {shapes.name!r} has no shapes: draw a rectangle around each object")
    s_scale, s_shift = np.asarray(shapes.scale, float), np.asarray(shapes.translate, float)
    i_scale, i_shift = np.asarray(image.scale, float), np.asarray(image.translate, float)
    out = []
    for v in shapes.data:
        world = np.asarray(v, float) * s_scale + s_shift
        yx = (world[:, -2:] - i_shift[-2:]) / i_scale[-2:]
        box = [yx[:, 0].min(), yx[:, 1].min(), yx[:, 0].max(), yx[:, 1].max()]
        if n_frames is not None and shapes.ndim >= 3:
            box = [float(np.round((world[0, -3] - i_shift[-3]) / i_scale[-3]))] + box
        out.append(box)
    other = sum(t != "rectangle" for t in shapes.shape_type)
    note = f"{other} shape(s) that are not rectangles were used as their bounding boxes." if other else ""
    return out, note


class LocalizeWidget(BoxesWidget):
    run_text = "Localize"
    task, kind, verb = "localize", "localization", "localizing the object in"
    lazy_unit = "frame"  # a lazy stack is read frame by frame

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(napari_viewer, registry)
        self.mode = ComboBox(label="mode", choices=self._mode_choices,
                             tooltip="one box per image (the current frame of a stack), per frame of a stack, "
                                     "or per rectangle drawn in a Shapes layer")
        self.regions = ComboBox(label="regions", choices=self._region_choices, visible=False,
                                tooltip="a Shapes layer with a rectangle drawn around each object")
        self.tta = CheckBox(text="test-time augmentation (4 mirror flips, 4x slower)", value=False)
        self.extend([self.image, *self.picker.widgets, self.note, self.mode, self.regions, self.tta, self.centres,
                     *self.controls()])
        self.mode.changed.connect(self._on_mode)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_regions)
        self._on_model()

    # -- inputs ----------------------------------------------------------------------------
    def _stack(self) -> bool:
        layer = self.image.value
        try:
            return layer is not None and layer_frames(layer) is not None
        except InputError:
            return False

    def _mode_choices(self, *_):
        return [CURRENT, EACH, REGIONS] if self._stack() else [WHOLE, REGIONS]

    def _region_choices(self, *_):
        names = [lyr.name for lyr in self.viewer.layers if lyr._type_string == "shapes"
                 and result_meta_of(lyr).get("kind") != self.kind]  # not our own results
        return names or [NONE]

    def _refresh_regions(self, *_):
        before = self.regions.value
        self.regions.reset_choices()
        choices = self._region_choices()
        if before in (None, NONE) and choices != [NONE]:
            self.regions.value = choices[-1]  # a newly drawn layer

    def layer_changed(self, layer) -> None:
        if not hasattr(self, "mode"):
            return
        before, choices = self.mode.value, self._mode_choices()
        if list(self.mode.choices) != choices:  # emptied first: Qt would keep the old items' order
            with self.mode.changed.blocked():
                self.mode.native.clear()
                self.mode.reset_choices()
        self.mode.value = before if before in choices else choices[0]
        self._on_mode()

    def _on_mode(self, *_):
        self.regions.visible = self.mode.value == REGIONS

    # -- running ---------------------------------------------------------------------------
    def request(self, rerun: bool = False):
        from ..backends.dispatch import card_payload, job_for

        layer, card, n_frames = self.checked_input()
        mode, extra, self._region_note, self._read_note = self.mode.value, {}, "", ""
        frames = None
        lazy = _lazy.is_lazy_stack(layer, n_frames)  # read frame by frame, never whole
        job, base = job_for(card, task="localize"), dict(model=card_payload(card), tta=bool(self.tta.value))
        if mode == REGIONS:
            name = self.regions.value
            if name in (None, NONE) or name not in self.viewer.layers:
                raise InputError("add a Shapes layer and draw a rectangle around each object, then choose it "
                                 "as the regions")
            regions, self._region_note = regions_of(self.viewer.layers[name], layer, n_frames)
            if lazy:
                self._read_note = "read frame by frame"
                return _lazy.frames_task(layer, job, base, frame_regions(regions, n_frames)), None, BoxJob(
                    layer, card, "regions", None)
            extra["regions"] = regions
            if n_frames is not None and all(len(r) == 5 for r in regions):
                extra["frames"] = sorted({int(r[0]) for r in regions})
            image, axes = job_image(layer, None)
            kind = "regions"
        else:
            if n_frames is not None and mode != EACH:
                frames = [min(self.current_frame(), n_frames - 1)]
            elif lazy:
                self._read_note = "read frame by frame"
                return _lazy.frames_task(layer, job, base, [(f, None) for f in range(n_frames)]), None, BoxJob(
                    layer, card, "image", None)
            image, axes = job_image(layer, frames)  # a lazy stack's current frame: that frame alone
            kind = "image"
        return job, dict(base, image=image, axes=axes, **extra), BoxJob(layer, card, kind, frames)

    def summary(self, this_run, shown, ctx: BoxJob, layers: dict) -> str:
        if this_run.n_objects == 1:
            text = f"{this_run.classes[0]} ({this_run.scores[0]:.2f}"
            p = this_run.probabilities
            if p is not None and p.shape[1] > 1:  # the runner-up: how sure the model is
                second = int(np.argsort(p[0])[-2])
                text += f"; next {this_run.class_names[second]} {p[0, second]:.2f}"
            text += ")"
        else:
            text = counts_text(this_run, "regions" if ctx.mode == "regions" else "frames")
        if ctx.frames is not None and len(ctx.frames) == 1:
            text = f"frame {ctx.frames[0]}: {text}; {shown.n_objects} in the stack"
        took = this_run.timings.get("total_s")
        text += f" ({ctx.layer.name} [{shown.model}]" + (f", {fmt_seconds(took)})" if took is not None else ")")
        if getattr(self, "_read_note", ""):
            text = text[:-1] + f", {self._read_note})"
        return text + (f" {self._region_note}" if getattr(self, "_region_note", "") else "")
