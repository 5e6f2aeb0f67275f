"""What the Detect and Localize dock widgets share: boxes results in the viewer.

* the image layer's input for a job (a 2-D image, or a stack with one frame axis first; the
  channel check against the model's card, with a note when the backend adapts the channels);
* the frames a run replaces: a run on the current frame of a stack replaces that frame's boxes
  and keeps the other frames' (:func:`merge_frames`); the shown result is read back from its
  Shapes layer, so boxes the user deleted stay deleted;
* putting the result into the viewer as a Shapes layer of rectangles (features, text, a colour per
  class) and a Points layer of centres, replacing only the plugin's own previous layers; above
  :data:`MAX_SHAPES` boxes only the Points layer is shown (napari's Shapes layer is slow there);
* the status line's counts per class;
* a large lazy layer (dask, zarr, an OME-Zarr pyramid) runs block by block when the subclass's
  ``request`` returns a task instead of a job name (:mod:`._lazy`).

No framework is imported here: the jobs run in the compute worker.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import CheckBox, create_widget

from ..core.axes import InputError
from ..core.registry import ModelCard, ModelRegistry
from ..core.results import DetectionResult, LocalizationResult
from ..layers.common import RESULT_KEY
from ..layers.detection import detection_layers
from . import _lazy
from ._base import JobWidget, StatusLabel, fmt_seconds
from ._model_picker import BROWSE, MODEL_ERRORS, ModelPicker
from ._results import drop_result, find_result, put_result, result_meta_of

#: above this many boxes only the centres are shown (napari's Shapes layer gets slow)
MAX_SHAPES = 5000


@dataclass
class BoxJob:
    """What a running job was started with (the widget's inputs may change meanwhile)."""

    layer: object
    card: ModelCard
    mode: str
    frames: list[int] | None = None  # the stack's frames this run replaces; None: the whole result
    rerun: bool = False  # a re-run of the shown result (new thresholds)
    blockwise: bool = False  # a large lazy layer read tile by tile


# -- the image layer's input --------------------------------------------------------------------
def layer_array(layer):
    """The layer's full-resolution data (the first level of a multiscale layer), not converted."""
    return _lazy.full_data(layer)


def layer_frames(layer) -> int | None:
    """Number of frames of a stack layer (one frame axis first), None for a single 2-D image;
    an InputError for other layers."""
    shape = np.shape(layer_array(layer))
    core = len(shape) - (1 if layer.rgb else 0)
    if core == 2:
        return None
    if core == 3:
        return int(shape[0])
    raise InputError(f"the layer {layer.name!r} has {core} axes besides colour; this widget takes a 2-D image "
                     "or a stack of 2-D frames (one frame axis first, e.g. time or z)")


def channel_note(layer, card: ModelCard) -> str:
    """What the backend does with the layer's channels for ``card`` ('' when they match)."""
    n_ch = int(np.shape(layer_array(layer))[-1]) if layer.rgb else 1
    want = int(card.channels or 3)
    if n_ch == 4:
        return "RGBA image: the alpha channel is ignored."
    if n_ch == 1 and want == 3:
        return (f"Grayscale image: fine for the RGB model {card.name!r} (its channel is replicated to the "
                "model's 3 channels).")
    if n_ch == 3 and want == 1:
        return f"RGB image: {card.name!r} is a grayscale model, the colours are averaged to gray."
    return ""


def job_image(layer, frames: list[int] | None):
    """``(array, axes)`` for the job: the whole layer (frames None) or the listed frames of a
    stack as a smaller stack (their boxes come back with positions 0..k-1: see :func:`renumber`)."""
    from ..scaleout.lazy_layers import load

    data = layer_array(layer)
    c = "C" if layer.rgb else ""
    n = layer_frames(layer)
    if n is None:
        return load(data), "YX" + c
    if frames is None:
        return load(data), "TYX" + c
    return np.stack([load(data[f]) for f in frames]), "TYX" + c


def renumber(res: DetectionResult, frames: list[int] | None) -> DetectionResult:
    """A result of :func:`job_image`'s smaller stack with the stack's own frame indices."""
    if frames is None:
        return res
    idx = np.asarray(frames, np.int64)
    return dataclasses.replace(res, frame=idx[res.frame] if len(res.frame) else res.frame, has_frames=True,
                               frames=[int(f) for f in frames])


# -- merging a frame's result into the stack's -----------------------------------------------
def _row_fields(res: DetectionResult) -> list[str]:
    names = ["boxes", "class_ids", "scores", "frame"]
    if isinstance(res, LocalizationResult):
        names += [k for k in ("probabilities", "region") if getattr(res, k) is not None]
    return names


def take(res: DetectionResult, idx) -> DetectionResult:
    """The rows ``idx`` (indices or a boolean mask) of a result."""
    return dataclasses.replace(res, **{k: getattr(res, k)[idx] for k in _row_fields(res)})


def concat(a: DetectionResult, b: DetectionResult) -> DetectionResult:
    """``a``'s rows then ``b``'s, with ``b``'s settings; the processed frames of both."""
    fields = {k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in _row_fields(b) if k in _row_fields(a)}
    frames = sorted(set(a.frames or []) | set(b.frames or [])) if b.has_frames else None
    return dataclasses.replace(b, **fields, frames=frames)


def result_from_layer(shapes, like: DetectionResult) -> DetectionResult | None:
    """The result a Shapes result layer shows now (the user may have deleted boxes), in ``like``'s
    type and classes; None when the layer cannot be read back as such."""
    feats = shapes.features
    names = list(like.class_names)
    if len(feats) != len(shapes.data) or "class" not in feats or "score" not in feats:
        return None
    ids = np.array([names.index(c) if c in names else -1 for c in feats["class"].astype(object)], np.int64)
    if (ids < 0).any():
        return None
    verts = [np.asarray(v, np.float64) for v in shapes.data]
    boxes = np.array([[v[:, -2].min(), v[:, -1].min(), v[:, -2].max(), v[:, -1].max()] for v in verts]).reshape(-1, 4)
    frame = (np.asarray(feats["frame"], np.int64) if "frame" in feats
             else np.array([int(round(v[0, 0])) for v in verts], np.int64) if shapes.ndim == 3 else None)
    extra = {}
    if isinstance(like, LocalizationResult):
        cols = [f"p_{c}" for c in names]
        extra["probabilities"] = (np.column_stack([feats[c].to_numpy(np.float64) for c in cols])
                                  if all(c in feats for c in cols) else None)
        extra["region"] = feats["region"].to_numpy(np.int64) if "region" in feats else None
    meta = result_meta_of(shapes)
    return dataclasses.replace(like, boxes=boxes, class_ids=ids, scores=feats["score"].to_numpy(np.float64),
                               frame=frame, frames=meta.get("frames"), **extra)


def merge_frames(previous: DetectionResult | None, new: DetectionResult, frames: list[int]) -> DetectionResult:
    """The stack's result: ``previous`` without ``frames``, then ``new`` (those frames' boxes)."""
    if previous is None or not previous.has_frames or list(previous.class_names) != list(new.class_names):
        return new
    return concat(take(previous, ~np.isin(previous.frame, frames)), new)


def counts_text(res: DetectionResult, what: str = "objects") -> str:
    """``"212 objects: RBC 190, WBC 12, Platelets 10"``."""
    n = res.n_objects
    if not n:
        return f"0 {what}"
    per = ", ".join(f"{name} {k}" for name, k in res.counts().items())
    return f"{n} {what[:-1] if n == 1 else what}: {per}"


# -- the widget base ---------------------------------------------------------------------------
class BoxesWidget(JobWidget):
    """Image layer + model of ``task`` -> Shapes rectangles + Points centres named
    ``"<image> [<model>]"``. Subclasses add their inputs and build the job (:meth:`request`)."""

    task = ""  # "detect" / "localize"
    kind = ""  # the result layers' kind ("detection" / "localization"), from layers.detection
    verb = ""  # "detecting" / "localizing"
    blockwise = False  # a large lazy layer runs block by block (the subclass's request does it)
    lazy_unit = "tile"  # what a lazy layer is read by, in the busy message

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(napari_viewer, registry, labels=True)
        self._card: ModelCard | None = None
        self._shown: dict = {}  # (image, model) -> the result shown (for a Points-only result)
        self.last_result: DetectionResult | None = None  # the latest run's own result (Python access)
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.picker = ModelPicker(self.registry, self.task)
        self.model, self.model_dir = self.picker.model, self.picker.folder
        self.note = StatusLabel(label="", visible=False)
        self.centres = CheckBox(text="also add centre points", value=True)
        self.picker.connect(self._on_model)
        self.image.changed.connect(self._on_layer)

    # -- model and layer ---------------------------------------------------------------------
    def read_model(self, card: ModelCard) -> None:
        """Read what the widget shows of ``card`` (thresholds ...); may raise MODEL_ERRORS."""

    def _on_model(self, *_):
        # the folder field also when "browse" is the only choice (no change event shows it then)
        self.model_dir.visible = self.model.value == BROWSE
        card, err = self.picker.check(self.read_model)
        self._card = card
        self.block(err)
        self._on_layer()

    def _on_layer(self, *_):
        """A new layer or model: the channel note, and whatever the subclass shows of the layer."""
        layer, note = self.image.value, ""
        if layer is not None and self._card is not None:
            try:
                layer_frames(layer)
                lazy = _lazy.describe(layer, "detected", "tile") if self.blockwise else ""
                note = " ".join(n for n in (lazy, channel_note(layer, self._card)) if n)
            except InputError as exc:
                note = str(exc)
        self.note.value = note
        self.note.visible = bool(note)
        self.layer_changed(layer)

    def layer_changed(self, layer) -> None:
        """Hook: the image layer (or model) changed."""

    def current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0])

    def checked_input(self):
        """``(layer, card, n_frames)`` or an InputError, before any job is started."""
        layer = self.image.value
        if layer is None:
            raise InputError("select an Image layer")
        if self._card is None:
            raise InputError(self._blocked or "choose a model")
        return layer, self._card, layer_frames(layer)

    # -- running -----------------------------------------------------------------------------
    def request(self, rerun: bool = False):  # pragma: no cover - every subclass has its own
        """``(job, kwargs, BoxJob)`` of a run with the widget's inputs; ``job`` may be a task
        (``task(ctx)``, see :meth:`._compute.JobRunner.start_task`) with ``kwargs`` None."""
        raise NotImplementedError

    def cancel(self, *_):
        _lazy.cancel(self)

    def run(self, *_, rerun: bool = False):
        if self.runner.running:
            return
        try:
            job, kwargs, ctx = self.request(rerun)
        except MODEL_ERRORS as exc:
            self.report_error(exc)
            return
        note = channel_note(ctx.layer, ctx.card)
        where = (f" (frame {ctx.frames[0]})" if ctx.frames and len(ctx.frames) == 1
                 else f" ({len(ctx.frames)} frames)" if ctx.frames else "")
        message = f"{self.verb} {ctx.layer.name}{where} with {ctx.card.name} ..." + (f" {note}" if note else "")
        if callable(job):  # block by block
            _lazy.start_task(self, job, on_done=lambda res: self._on_done(res, ctx),
                             message=message.replace(" ...", f" {self.lazy_unit} by {self.lazy_unit} ..."),
                             on_finished=self.after_job)
            return
        self.start_job(job, kwargs, on_done=lambda res: self._on_done(res, ctx), message=message,
                       on_finished=self.after_job)

    def after_job(self):
        """Hook: a job ended (done, failed or cancelled)."""

    def _on_done(self, res: DetectionResult, ctx: BoxJob):
        from napari.utils.notifications import show_warning

        self.progress.value = 100
        for w in res.warnings:
            show_warning(w)
        res = renumber(res, ctx.frames)
        this_run = self.last_result = res
        if ctx.frames is not None:
            res = merge_frames(self._previous(ctx.layer.name, res, ctx.mode), res, ctx.frames)
        shown = self.show(res, ctx)
        self.report(self.summary(this_run, res, ctx, shown))

    def _previous(self, source: str, like: DetectionResult, mode: str) -> DetectionResult | None:
        """The result of (``source``, model) shown now, if it is a stack result of ``mode``."""
        shapes = find_result(self.viewer, self.kind, source, like.model)
        if shapes is not None:
            meta = result_meta_of(shapes)
            if shapes.ndim != 3 or meta.get("mode") != mode or meta.get("class_names") != list(like.class_names):
                return None
            return result_from_layer(shapes, like)
        stored = self._shown.get((source, like.model))
        points = find_result(self.viewer, self.kind + "-centres", source, like.model)
        if (stored is not None and points is not None and len(points.data) == stored.n_objects
                and result_meta_of(points).get("mode") == mode):
            return stored
        return None

    def show(self, res: DetectionResult, ctx: BoxJob) -> dict:
        """Put ``res`` into the viewer; ``{"shapes": layer or None, "points": layer or None,
        "points_only": bool}``."""
        layer = ctx.layer
        (sdata, skw, _), (pdata, pkw, _) = detection_layers(res, layer.name, scale=layer.scale,
                                                             translate=layer.translate, points=True)
        for kw in (skw, pkw):
            kw["metadata"][RESULT_KEY].update(mode=ctx.mode, frames=res.frames)
            if ctx.blockwise:
                kw["metadata"][RESULT_KEY]["blockwise"] = True
        source, model = layer.name, res.model
        self._shown[(source, model)] = res
        points_only = res.n_objects > MAX_SHAPES
        shapes = None
        if points_only:
            drop_result(self.viewer, self.kind, source, model)
        else:
            old = find_result(self.viewer, self.kind, source, model)
            if old is not None and old.ndim != skw["ndim"]:
                self.viewer.layers.remove(old)
                old = None
            attrs = {"edge_color": skw["edge_color"], "edge_width": skw["edge_width"],
                     "face_color": skw["face_color"], "text": skw["text"]}
            if old is not None and len(sdata):
                attrs = {"shape_type": "rectangle", **attrs}  # the data setter makes new shapes polygons
            shapes = put_result(self.viewer, sdata, skw, "shapes", old, attrs=attrs if old is not None else None)
        points = None
        if self.centres.value or points_only:
            old = find_result(self.viewer, self.kind + "-centres", source, model)
            if old is not None and old.ndim != pkw["ndim"]:
                self.viewer.layers.remove(old)
                old = None
            points = put_result(self.viewer, pdata, pkw, "points", old,
                                attrs={"face_color": pkw["face_color"], "size": pkw["size"]} if old is not None
                                else None)
        else:
            drop_result(self.viewer, self.kind + "-centres", source, model)
        return {"shapes": shapes, "points": points, "points_only": points_only}

    def summary(self, this_run: DetectionResult, shown: DetectionResult, ctx: BoxJob, layers: dict) -> str:
        """The status line after a run."""
        text = counts_text(this_run)
        if ctx.frames is not None and len(ctx.frames) == 1 and not ctx.rerun:
            text = f"frame {ctx.frames[0]}: {text}; {shown.n_objects} in the stack"
        took = this_run.timings.get("total_s")
        name = f"{ctx.layer.name} [{shown.model}]"
        text += (f" ({name}" + (f", {fmt_seconds(took)}" if took is not None else "")
                 + (", read tile by tile" if ctx.blockwise else "") + ")")
        if layers["points_only"]:
            text += (f". Over {MAX_SHAPES} boxes: only their centres are shown (napari's Shapes layer is slow "
                     "with that many); raise the score threshold to see the boxes")
        return text
