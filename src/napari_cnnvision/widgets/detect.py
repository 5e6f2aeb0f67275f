"""The Detect dock widget: image layer + detector + score / NMS thresholds -> boxes with classes.

The result is a Shapes layer of rectangles (features ``class``, ``score``; text "class score";
a colour per class) and a Points layer of the box centres, both named ``"<image> [<model>]"``.
Changing a threshold after a run re-runs only the post-processing: the compute worker keeps the
network's raw boxes of each frame, so only the score filter and NMS run again.

A large lazy layer (dask, zarr, an OME-Zarr pyramid) is read a few tiles at a time (the tiles a
whole-image run uses), each batch detected in the compute worker and the boxes merged across tile
borders (:mod:`..scaleout.lazy_detect`); a threshold change then waits for the Detect button.
"""
from __future__ import annotations

from magicgui.widgets import ComboBox, FloatSpinBox

from ..core.axes import InputError
from ..core.registry import ModelCard, ModelRegistry
from . import _lazy
from ._boxes_widget import BoxesWidget, BoxJob, job_image, layer_frames
from ._results import find_result, result_meta_of

__all__ = ["DetectWidget"]
WHOLE, CURRENT = "whole stack", "current frame"
MODE = "frames"  # every run's rows are per frame: a current-frame run merges into any stack result


class DetectWidget(BoxesWidget):
    run_text = "Detect"
    task, kind, verb = "detect", "detection", "detecting objects in"
    blockwise = True

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(napari_viewer, registry)
        self._defaults = {"score": 0.5, "nms": 0.5}
        self._quiet = False  # showing a model's defaults: no automatic re-run
        self._pending = False  # a threshold changed while a job ran: re-check when it ends
        self.score = FloatSpinBox(label="score threshold", min=0.0, max=1.0, step=0.05, value=0.5,
                                  tooltip="boxes with a lower score are dropped (default: the model's)")
        self.nms = FloatSpinBox(label="overlap (NMS IoU)", min=0.0, max=1.0, step=0.05, value=0.5,
                                tooltip="of two boxes of one class overlapping more than this, the lower-scored "
                                        "one is dropped (default: the model's)")
        self.scope = ComboBox(label="frames", choices=[WHOLE, CURRENT], value=WHOLE, visible=False,
                              tooltip="a stack: every frame, or only the frame shown (its boxes replace that "
                                      "frame's, the other frames' stay)")
        self.extend([self.image, *self.picker.widgets, self.note, self.score, self.nms, self.scope, self.centres,
                     *self.controls()])
        from qtpy.QtCore import QTimer

        self._debounce = QTimer(self.native)  # coalesces quick threshold edits into one re-run
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(lambda: self.run(rerun=True))
        self.score.changed.connect(self._maybe_rerun)
        self.nms.changed.connect(self._maybe_rerun)
        self._on_model()

    # -- model defaults ----------------------------------------------------------------------
    def read_model(self, card: ModelCard) -> None:
        from ..backends.detection.thresholds import read_thresholds  # JSON only, no framework

        self._defaults = read_thresholds(card)  # a damaged folder raises here, before any job

    def _on_model(self, *_):
        super()._on_model()
        self._quiet = True
        try:
            self.score.value = float(self._defaults["score"])
            self.nms.value = float(self._defaults["nms"])
        finally:
            self._quiet = False
        tip = f"the model's: score {self._defaults['score']:g}, NMS IoU {self._defaults['nms']:g}"
        self.score.tooltip = self.nms.tooltip = tip

    def layer_changed(self, layer) -> None:
        try:
            stack = layer is not None and layer_frames(layer) is not None
        except InputError:  # reported when run (and in the note)
            stack = False
        self.scope.visible = stack  # only stacks have frames to choose

    # -- re-runs after a threshold change --------------------------------------------------
    def _shown_result(self):
        if self._card is None or self.image.value is None:
            return None
        name, model = self.image.value.name, self._card.name
        return (find_result(self.viewer, self.kind, name, model)
                or find_result(self.viewer, self.kind + "-centres", name, model))

    def _maybe_rerun(self, *_):
        """Re-run when the shown result of this image and model has other thresholds."""
        if self._quiet:
            return
        if self.runner.running:
            self._pending = True
            return
        shown = self._shown_result()
        if shown is None:
            return
        meta = result_meta_of(shown)
        same = (abs(float(meta.get("score_thresh", -1)) - self.score.value) < 1e-6
                and abs(float(meta.get("nms_thresh", -1)) - self.nms.value) < 1e-6)
        if not same:
            if meta.get("blockwise"):  # the whole image read again: only when asked
                self.report("Thresholds changed: press Detect to detect again tile by tile.")
                return
            self._debounce.start()

    def after_job(self):
        if self._pending:
            self._pending = False
            self._maybe_rerun()

    # -- running ---------------------------------------------------------------------------
    def run(self, *_, rerun: bool = False):
        self._debounce.stop()
        if not self.runner.running:
            self._pending = False
        super().run(rerun=rerun)

    def request(self, rerun: bool = False):
        from ..backends.dispatch import card_payload, job_for

        layer, card, n_frames = self.checked_input()
        shown = self._shown_result() if rerun else None
        if shown is not None:  # the frames the shown result has, with the new thresholds
            frames = result_meta_of(shown).get("frames")
            frames = None if n_frames is None or frames is None else [f for f in frames if f < n_frames]
        else:
            rerun = False
            current = n_frames is not None and self.scope.value == CURRENT
            frames = [min(self.current_frame(), n_frames - 1)] if current else None
        src = _lazy.blockwise_source(layer)
        if src is not None:
            return (self._blockwise_task(layer, card, src, n_frames, frames), None,
                    BoxJob(layer, card, MODE, frames, rerun, blockwise=True))
        image, axes = job_image(layer, frames)
        kwargs = dict(image=image, model=card_payload(card), axes=axes, score_thresh=float(self.score.value),
                      nms_thresh=float(self.nms.value))
        return job_for(card, task="detect"), kwargs, BoxJob(layer, card, MODE, frames, rerun)

    def _blockwise_task(self, layer, card, src, n_frames, frames):
        """``task(ctx)``: the lazy layer (each of its ``frames``, all when None) read and detected
        tile by tile; frames come back numbered 0..k-1 like :func:`job_image`'s stack."""
        from ..backends.dispatch import card_payload, job_for
        from ..scaleout.lazy_detect import detect_lazy, raw_thresholds
        from ._boxes_widget import concat, renumber

        job = job_for(card, task="detect")
        score, nms = float(self.score.value), float(self.nms.value)
        raw_score, raw_nms = raw_thresholds(score, nms)
        base = dict(axes="TYXC" if layer.rgb else "TYX", score_thresh=raw_score, nms_thresh=raw_nms, tile_size=0)
        todo = None if n_frames is None else (list(range(n_frames)) if frames is None else list(frames))

        def task(ctx):
            def one(plane, span):
                a, b = span

                def run_tiles(stack, fixed, sub, label):
                    return ctx.run(job, dict(base, image=stack, model=card_payload(fixed)),
                                   (a + (b - a) * sub[0], a + (b - a) * sub[1]), prefix=f"{label}: ")

                def progress(f, message=""):
                    ctx.progress(a + (b - a) * f, message)

                return detect_lazy(plane, card, run_tiles, score_thresh=score, nms_thresh=nms, progress=progress,
                                   check=ctx.check)

            if todo is None:
                return one(src, (0.0, 1.0))
            out, took = None, 0.0
            for k, f in enumerate(todo):
                res = renumber(one(src[f], (k / len(todo), (k + 1) / len(todo))), [k])
                took += res.timings["total_s"]
                out = res if out is None else concat(out, res)
            out.timings = {"total_s": took}
            return out

        return task
