"""The Segment dock widget: image layer + model + thresholds -> Labels layer (+ outlines).

A large lazy layer (dask, zarr, an OME-Zarr pyramid) is segmented block by block into an OME-Zarr
labels folder (the cache folder, or the one chosen) and shown as a Labels layer that reads it
lazily (:mod:`._lazy`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, create_widget

from ..core.axes import InputError
from ..core.registry import ModelCard, ModelRegistry
from ..layers.common import RESULT_KEY
from ..scaleout import lazy_layers
from ..layers.segmentation import OUTLINE_STYLE, outline_layer, segmentation_layers
from . import _axes, _lazy
from ._base import JobWidget, StatusLabel, fmt_seconds
from ._model_picker import BROWSE, MODEL_ERRORS, ModelPicker
from ._results import drop_result, find_result, put_result

__all__ = ["SegmentWidget", "BROWSE"]
KIND = "segmentation"


@dataclass
class JobContext:
    """What a running job was started with (the widget's inputs may change meanwhile)."""

    layer: object
    card: ModelCard
    frame: int | None = None
    optimized: bool = True
    outlines: bool = False


class SegmentWidget(JobWidget):
    run_text = "Segment"

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(napari_viewer, registry, labels=True)
        self._card: ModelCard | None = None
        self._thresholds: dict = {}
        self._pending = False  # a threshold changed while a job ran: re-check when it ends
        self._quiet = False  # showing a model's settings: no automatic re-run
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.picker = ModelPicker(self.registry, "segment")
        self.model, self.model_dir = self.picker.model, self.picker.folder
        self.axes = ComboBox(label="axes", choices=self._axes_choices,
                             tooltip="how the layer's axes are read: time frames, z slices, or one image")
        self.stitch = CheckBox(text="link objects across slices (3-D objects)", value=True)
        self.axes_note = StatusLabel(label="")
        self.optimized = CheckBox(text="use the model's optimized thresholds", value=True)
        self.prob = FloatSpinBox(label="probability", min=0.0, max=1.0, step=0.05, value=0.5, enabled=False)
        self.nms = FloatSpinBox(label="overlap (NMS)", min=0.0, max=1.0, step=0.05, value=0.4, enabled=False)
        self.model_norm = CheckBox(text="use the model's normalization", value=True)
        self.pmin = FloatSpinBox(label="normalize low %", min=0.0, max=100.0, step=0.5, value=1.0, enabled=False)
        self.pmax = FloatSpinBox(label="normalize high %", min=0.0, max=100.0, step=0.1, value=99.8,
                                 enabled=False)
        self.tiles = LineEdit(label="tiles", value="auto", tooltip="'auto', 'none' or counts per axis: 2,2")
        self.scope = ComboBox(label="frames", choices=["whole stack", "current frame"], value="whole stack")
        self.outlines = CheckBox(text="also add outlines", value=False)
        self.tta = CheckBox(text="test-time augmentation (8x slower, a little more accurate)", value=False,
                            tooltip="average the network's output over the image's 8 flips and 90° turns")
        self.lazy_note = StatusLabel(label="", visible=False)
        self.labels_dir = FileEdit(mode="d", label="labels folder", nullable=True, visible=False,
                                   tooltip="where the block-wise labels (OME-Zarr) go; empty: the cache folder")
        self.extend([self.image, *self.picker.widgets, self.axes, self.stitch, self.axes_note, self.lazy_note,
                     self.labels_dir, self.optimized, self.prob, self.nms, self.model_norm, self.pmin, self.pmax,
                     self.tiles, self.scope, self.outlines, self.tta, *self.controls()])

        from qtpy.QtCore import QTimer

        self._debounce = QTimer(self.native)  # coalesces quick threshold edits into one re-run
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.run)
        self.picker.connect(self._on_model)
        self.image.changed.connect(self._on_layer)
        self.axes.changed.connect(self._on_axes)
        self.stitch.changed.connect(self._on_axes)
        self.optimized.changed.connect(self._on_optimized)
        self.model_norm.changed.connect(self._on_norm)
        self.prob.changed.connect(self._maybe_rerun)
        self.nms.changed.connect(self._maybe_rerun)
        self._on_model()

    # -- model choice -----------------------------------------------------------------------
    def current_card(self) -> ModelCard:
        return self.picker.card()

    @property
    def _model_ndim(self) -> int:
        return 3 if self._card is not None and "Z" in self._card.axes else 2

    def _on_model(self, *_):
        from ..backends.dispatch import thresholds_for

        try:
            card = self.picker.card()
            thr = thresholds_for(card)  # a damaged folder raises here, before any job
        except MODEL_ERRORS as exc:
            card, thr, err = None, {}, str(exc)
        else:
            err = None
        self._card, self._thresholds = card, thr or {}
        self.block(err)
        backend = card.backend if card is not None else ""
        uses_nms = backend not in ("unet", "bioimageio")  # watershed-based: no overlap threshold
        self.tta.enabled = backend != "stardist3d"  # flips/turns of 3D rays are not exact
        if not self.tta.enabled:
            self.tta.value = False
        self.nms.visible = uses_nms
        self.prob.label = "probability" if uses_nms else "seed probability"
        self._quiet = True
        try:
            self._on_optimized()
            self._on_norm()
            self._on_layer()
        finally:
            self._quiet = False

    def _on_optimized(self, *_):
        manual = not self.optimized.value
        self.prob.enabled = self.nms.enabled = manual
        if not manual:
            self.prob.value = float(self._thresholds.get("prob") or 0.5)
            self.nms.value = float(self._thresholds.get("nms") or 0.4)
        self._maybe_rerun()

    def _on_norm(self, *_):
        use = self.model_norm.value
        self.pmin.enabled = self.pmax.enabled = not use
        norm = self._card.normalization if self._card is not None else {}
        if use and norm.get("type", "percentile") == "percentile":
            self.pmin.value = float(norm.get("pmin", 1.0))
            self.pmax.value = float(norm.get("pmax", 99.8))
        self.model_norm.tooltip = f"the model's card: {norm}" if norm else None

    # -- axes -------------------------------------------------------------------------------
    def _layer_axes(self) -> tuple[list[str], str | None]:
        """The axis orders the chosen layer can be read with for the chosen model, and the guess."""
        layer = self.image.value
        if layer is None or self._card is None:
            return [], None
        shape = np.shape(layer.data[0] if layer.multiscale else layer.data)
        args = (len(shape), bool(layer.rgb), self._model_ndim)
        return _axes.axes_choices(*args), _axes.guess_layer_axes(*args, getattr(layer, "axis_labels", None),
                                                                 layer.scale)

    def _axes_choices(self, *_):
        # a callable: napari's reset_choices (on every layer change) keeps them and the user's pick
        return [(_axes.label(a), a) for a in self._layer_axes()[0]]

    def _on_layer(self, *_):
        """A new layer or model: offer its axis orders and pick the guess."""
        choices, guess = self._layer_axes()
        note = _lazy.describe(self.image.value, "segmented")
        self.lazy_note.value = note
        self.lazy_note.visible = self.labels_dir.visible = bool(note)
        self.axes.reset_choices()
        if guess is not None:
            self.axes.value = guess
        self.axes.enabled = len(choices) > 1
        self._on_axes()

    def _slice_wise(self) -> bool:
        return self._model_ndim == 2 and "Z" in (self.axes.value or "")

    def _on_axes(self, *_):
        axes = self.axes.value or ""
        slice_wise = self._slice_wise()
        self.stitch.visible = slice_wise
        note = ""
        if slice_wise:
            note = ("2-D model: the z-stack is segmented slice by slice; "
                    + ("overlapping objects of neighbouring slices are linked into 3-D objects" if self.stitch.value
                       else "each slice's objects are counted on their own"))
        self.axes_note.value = note
        self.axes_note.visible = bool(note)
        self.scope.enabled = axes.startswith("T")

    # -- re-runs after a threshold change ---------------------------------------------------------
    def _result_is_current(self, layer) -> bool:
        meta = layer.metadata.get(RESULT_KEY, {})
        if self.optimized.value:
            return meta.get("thresholds") == "model"
        same = meta.get("prob_thresh") is not None and abs(meta["prob_thresh"] - self.prob.value) < 1e-6
        if self.nms.visible and meta.get("nms_thresh") is not None:
            same = same and abs(meta["nms_thresh"] - self.nms.value) < 1e-6
        return meta.get("thresholds") == "user" and same

    def _maybe_rerun(self, *_):
        """Re-run when the shown result of this image and model was made with other thresholds.

        The worker caches the network's output, so only the post-processing runs again. An edit
        made while a job runs is applied when it ends."""
        if self._quiet or self._card is None or self.image.value is None:
            return
        if self.runner.running:
            self._pending = True
            return
        shown = find_result(self.viewer, KIND, self.image.value.name, self._card.name)
        if shown is not None and not self._result_is_current(shown):
            if "blockwise" in shown.metadata.get(RESULT_KEY, {}):  # minutes of work: only when asked
                self.report("Thresholds changed: press Segment to segment the image again block by block.")
                return
            self._debounce.start()

    def _after_job(self):
        if self._pending:
            self._pending = False
            self._maybe_rerun()

    # -- running ----------------------------------------------------------------------------
    def _job_context(self, frame: int | None = None) -> JobContext:
        if self.image.value is None:
            raise InputError("select an Image layer to segment")
        if self._card is None:
            raise InputError(self._blocked or "choose a model")
        return JobContext(self.image.value, self._card, frame, bool(self.optimized.value), bool(self.outlines.value))

    def _request(self):
        """``(job, kwargs, context)`` of a run with the widget's current inputs."""
        from ..backends.dispatch import card_payload, job_for
        from ..cli.segment import parse_tiles

        ctx = self._job_context()
        layer, card = ctx.layer, ctx.card
        shape = np.shape(_lazy.full_data(layer))  # not loaded
        n_ch = shape[-1] if layer.rgb else 1
        if n_ch != card.channels:  # from the card: no need to load the model to know
            want = "a single-channel (grayscale)" if card.channels == 1 else f"a {card.channels}-channel (e.g. RGB)"
            got = f"an RGB image ({n_ch} channels)" if n_ch > 1 else "a single-channel image"
            raise InputError(f"model {card.name!r} expects {want} image but the layer {layer.name!r} is {got}; "
                             "choose a matching model or convert the image")
        axes = self.axes.value
        if not axes:
            raise InputError(f"model {card.name!r} is a {self._model_ndim}-D model; the layer {layer.name!r} has "
                             f"{len(shape) - (1 if layer.rgb else 0)} spatial/frame axes, which it cannot read")
        src = _lazy.blockwise_source(layer)
        if src is not None:
            return self._blockwise_request(ctx, src, axes)
        data = lazy_layers.load(_lazy.full_data(layer))
        full = axes + ("C" if layer.rgb else "")
        if axes.startswith("T") and self.scope.value == "current frame":
            ctx.frame = int(self.viewer.dims.current_step[0])
            data, full = data[ctx.frame], full[1:]
        kwargs = dict(image=data, model=card_payload(card), axes=full, n_tiles=parse_tiles(self.tiles.value),
                      tta=bool(self.tta.value))
        if self._slice_wise():
            kwargs["stitch_z"] = bool(self.stitch.value)
        if not self.model_norm.value:  # the user's choice; else the backend uses the card's
            kwargs.update(pmin=self.pmin.value, pmax=self.pmax.value)
        if not ctx.optimized:
            kwargs["prob_thresh"] = self.prob.value
            if self.nms.visible:
                kwargs["nms_thresh"] = self.nms.value
        return job_for(card, task="segment"), kwargs, ctx

    def _blockwise_request(self, ctx: JobContext, src, axes: str):
        """``(task, None, context)``: the lazy layer segmented block by block, each window a job."""
        from ..backends.dispatch import card_payload, job_for
        from ..cli.segment import parse_tiles

        layer, card = ctx.layer, ctx.card
        _lazy.check_plane(layer, src, "segmentation")
        if layer.rgb:
            raise InputError(f"block-wise segmentation takes a single-channel image; the layer {layer.name!r} is a "
                             "large lazy colour image")
        if axes != "YX" or self._model_ndim != 2:
            raise InputError(f"block-wise segmentation takes a 2-D image (YX) and a 2-D model; the layer "
                             f"{layer.name!r} is read as {axes} with the {self._model_ndim}-D model {card.name!r}")
        job = job_for(card, task="segment")
        base = dict(axes="YX", n_tiles=parse_tiles(self.tiles.value), tta=bool(self.tta.value))
        if not ctx.optimized:
            base["prob_thresh"] = self.prob.value
            if self.nms.visible:
                base["nms_thresh"] = self.nms.value
        pmin, pmax = (None, None) if self.model_norm.value else (self.pmin.value, self.pmax.value)
        out = lazy_layers.output_path(self.labels_dir.value, layer.name, card.name)

        def task(tctx):
            def run_window(window, fixed, span, label):
                return tctx.run(job, dict(base, image=window, model=card_payload(fixed)), span, prefix=f"{label}: ")

            return lazy_layers.segment_lazy(src, out, card, run_window, block=lazy_layers.SEGMENT_BLOCK, pmin=pmin,
                                            pmax=pmax, progress=tctx.progress, check=tctx.check, tta=base["tta"])

        return task, None, ctx

    def cancel(self, *_):
        _lazy.cancel(self)

    def run(self, *_):
        self._debounce.stop()
        if self.runner.running:
            return
        try:
            job, kwargs, ctx = self._request()
        except MODEL_ERRORS as exc:
            self.report_error(exc)
            return
        self._pending = False
        if callable(job):  # block by block
            _lazy.start_task(self, job, on_done=lambda res: self._on_blockwise_done(res, ctx),
                             message=f"segmenting {ctx.layer.name} block by block ...", on_finished=self._after_job)
            return
        self.start_job(job, kwargs, on_done=lambda res: self._on_done(res, ctx),
                       message=f"segmenting {ctx.layer.name} ...", on_finished=self._after_job)

    def _on_done(self, result, ctx: JobContext):
        from napari.utils.notifications import show_warning

        self.progress.value = 100
        for w in result.warnings:
            show_warning(w)
        layer, frame = ctx.layer, ctx.frame
        (labels, kw, _), *_ = segmentation_layers(result, layer.name, scale=layer.scale, translate=layer.translate)
        kw["metadata"][RESULT_KEY]["thresholds"] = "model" if ctx.optimized else "user"
        existing = find_result(self.viewer, KIND, layer.name, result.model)
        if frame is not None:
            labels, kw["features"] = _merge_frame(existing, labels, kw["features"], frame, layer.data.shape[0])
            kw["scale"], kw["translate"] = tuple(layer.scale)[:labels.ndim], tuple(layer.translate)[:labels.ndim]
        target = put_result(self.viewer, labels, kw, "labels", existing)
        n_total = len(target.features)
        if ctx.outlines and n_total:
            data, okw, kind = outline_layer(target.data, target.name, kw["metadata"], target.scale, target.translate)
            old = find_result(self.viewer, KIND + "-outlines", layer.name, result.model)
            put_result(self.viewer, data, okw, kind, old, attrs=OUTLINE_STYLE)
        else:  # outlines off, or nothing to outline: no stale outlines
            drop_result(self.viewer, KIND + "-outlines", layer.name, result.model)
        took = fmt_seconds(result.timings.get('total_s', 0))
        if frame is not None:
            self.report(f"{result.n_objects} objects in frame {frame}; {n_total} in the stack "
                        f"({target.name}, {took})")
        else:
            self.report(f"{result.n_objects} objects in {target.name} ({took})")

    def _on_blockwise_done(self, res, ctx: JobContext):
        """A block-wise result: a new Labels layer reading the OME-Zarr labels lazily."""
        from napari.utils.notifications import show_warning

        from ..layers.lazy import blockwise_labels_layers

        self.progress.value = 100
        for w in res.warnings:
            show_warning(w)
        layer = ctx.layer
        (labels, kw, _), *rest = blockwise_labels_layers(res, layer.name, scale=layer.scale,
                                                         translate=layer.translate, outlines=ctx.outlines)
        kw["metadata"][RESULT_KEY]["thresholds"] = "model" if ctx.optimized else "user"
        drop_result(self.viewer, KIND, layer.name, res.model)  # lazy levels, not an array to replace in place
        drop_result(self.viewer, KIND + "-outlines", layer.name, res.model)
        target = put_result(self.viewer, labels, kw, "labels")
        for odata, okw, kind in rest:
            put_result(self.viewer, odata, okw, kind, attrs=OUTLINE_STYLE)
        self.report(f"{res.n_objects} objects in {target.name} ({fmt_seconds(res.timings.get('total_s', 0))}, "
                    f"{res.n_blocks} blocks of {res.block} px; labels in {res.path})")


def _merge_frame(existing, frame_labels, frame_features, frame: int, n_frames: int):
    """Put one frame's result into the stack result: other frames and their rows stay,
    this frame's labels are shifted so labels stay unique across the stack."""
    import pandas as pd

    from ..backends.common import compact_labels

    shape = (n_frames,) + frame_labels.shape
    if existing is not None and existing.data.shape == shape:
        full = np.array(existing.data, dtype=np.uint32)
        old = existing.features
        old = old[old["frame"] != frame] if "frame" in old else old.iloc[0:0]
    else:
        full, old = np.zeros(shape, np.uint32), None
    full[frame] = 0
    offset = int(full.max())
    full[frame] = np.where(frame_labels > 0, frame_labels.astype(np.uint32) + offset, 0)
    feats = frame_features.copy()
    feats["label"] = feats["label"] + offset
    feats["index"] = feats["label"]
    if "frame" not in feats:
        feats.insert(1, "frame", frame)
    if old is not None and len(old):
        feats = pd.concat([old, feats], ignore_index=True)
    return compact_labels(full), feats
