"""The Train dock widget: fine-tune or train a model on the annotations in napari layers.

Segmentation: an Image + a Labels layer (painted, or a Segment result corrected by hand);
detection: an Image + a Shapes layer of rectangles with a ``class`` feature (or a Detect result
corrected by hand); localization: a stack with one rectangle per frame. "pairs" takes the chosen
pair, or every annotation layer with its image (a result layer knows its image; else the image
whose name the layer's begins with). Partial annotation is the normal case: only the valid region
(the bounding box of the annotation per frame, or the rectangles of an optional "fully annotated"
Shapes layer) is used. The validation data is an automatic split or a pair of its own
(:mod:`._train_validation`). The widget reads the layers (:mod:`._train_layers`); the training
request is built by :mod:`..backends.training.plan`, as for the ``train`` command and
``api.train``, in a thread (:mod:`._train_start`: the GUI stays responsive). The job runs in the
compute worker's training process; a live plot shows the losses and the validation metric per
epoch (:mod:`._train_progress`); Stop ends after the current epoch and keeps the best model,
which is registered and listed in the other widgets. Closing the widget or napari while a
training runs asks first (:mod:`._train_close`), then stops it the same way. An interrupted run
can be resumed (:mod:`._train_resume`).
"""
from __future__ import annotations

import time

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox, create_widget

from ..core.axes import InputError
from ..core.registry import ModelRegistry
from ..layers.common import RESULT_KEY
from ._base import JobWidget, StatusLabel
from ._loss_plot import LossPlot
from ._train_close import guard_dock_button, install_close_guard
from ._train_progress import TrainProgress
from ._train_resume import ResumeList
from ._train_start import warm_imports
from ._train_validation import ValidationChoice

__all__ = ["TrainWidget", "refresh_model_lists", "FRESH", "TRAINABLE"]
FRESH = "(fresh network)"
NO_REGION = "(the annotation's bounding box)"
ONE_PAIR, ALL_PAIRS = "this image + annotation", "every annotation layer with its image"
#: task -> (annotation layer type, backends that train from layers here, fresh backend, metric label)
TRAINABLE = {"segment": ("Labels", ("unet", "stardist2d"), "unet", "AP@0.5"),
             "detect": ("Shapes", ("yolo", "fasterrcnn"), "yolo", "mAP@0.5"),
             "localize": ("Shapes", ("localizer",), "localizer", "accuracy")}
WIDGET_OF = {"segment": "Segment", "detect": "Detect", "localize": "Localize"}
EPOCHS, MINUTES = "epochs", "minutes"


def refresh_model_lists(viewer) -> int:
    """Re-read the model lists of every dock widget of ``viewer`` (magicgui ``reset_choices``);
    returns how many widgets were refreshed."""
    n = 0
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None)
    if docks is None:  # napari before dock_widgets: the wrappers
        docks = {k: d.inner_widget() for k, d in (getattr(window, "_dock_widgets", {}) or {}).items()}
    for inner in list(docks.values()):
        if hasattr(inner, "reset_choices"):
            inner.reset_choices()
            n += 1
    return n


class TrainWidget(TrainProgress, JobWidget):
    run_text = "Train"

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        from ..backends.training.plan import upsampling_choices

        super().__init__(napari_viewer, registry, labels=True)
        #: extra trainer settings merged last (network size, steps; for scripts and tests)
        self.advanced: dict = {}
        self.task = ComboBox(label="task", choices=list(TRAINABLE), value="segment")
        self.base = ComboBox(label="base model", choices=self._base_choices,
                             tooltip="fine-tune a model of this task (U-Net or StarDist for segmentation), "
                                     "or train a fresh network")
        ups = upsampling_choices()
        self.upsampling = ComboBox(label="upsampling", choices=list(ups),
                                   value="bilinear" if "bilinear" in ups else ups[0],
                                   tooltip="a fresh U-Net's decoder: nearest / bilinear + convolution, transposed "
                                           "convolution, or unpool (bed of nails: SegNet's max-unpooling)")
        self.pairs = ComboBox(label="pairs", choices=[ONE_PAIR, ALL_PAIRS], value=ONE_PAIR,
                              tooltip="train on the chosen image + annotation, or on every annotation layer "
                                      "paired with its image (by the result's image, or by name)")
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.target = ComboBox(label="annotation", choices=self._target_choices,
                               tooltip="Labels (segment) or Shapes rectangles with a 'class' feature (detect); "
                                       "the plugin's result layers, corrected by hand, work too")
        self.region = ComboBox(label="fully annotated", choices=self._region_choices,
                               tooltip="where the annotation is complete: by default its bounding box; "
                                       "or the rectangles of a Shapes layer")
        self.name = LineEdit(label="new model name", value="")
        self.budget = ComboBox(label="train for", choices=[EPOCHS, MINUTES], value=EPOCHS)
        self.epochs = SpinBox(label="epochs (0: auto)", min=0, max=10000, value=0,
                              tooltip="0: a default from the number of annotated objects")
        self.minutes = FloatSpinBox(label="minutes", min=0.1, max=1440.0, step=0.5, value=5.0, visible=False)
        self.lr = LineEdit(label="learning rate", value="auto", tooltip="'auto': 1e-3 for a fresh network, "
                                                                         "3e-4 when fine-tuning")
        self.validation = ValidationChoice(self._target_choices)
        self.val_fraction = self.validation.fraction
        self.batch = SpinBox(label="batch size (0: auto)", min=0, max=256, value=0, tooltip="0: the default")
        self.patch = SpinBox(label="patch size (0: auto)", min=0, max=1024, step=16, value=0,
                             tooltip="segmentation: the side of the training patches; 0: ~4 object diameters")
        self.flips = CheckBox(text="flips", value=True)
        self.turns = CheckBox(text="90° turns", value=True)
        self.intensity = CheckBox(text="intensity", value=True)
        self.scale = CheckBox(text="scale", value=False)
        self.augment = Container(layout="horizontal", label="augment", labels=False,
                                 widgets=[self.flips, self.turns, self.intensity, self.scale])
        self.split = StatusLabel(label="")
        self.stop_btn = PushButton(text="Stop (keep the best so far)", enabled=False)
        self.resumes = ResumeList(self.registry.user_dir)
        self.resume_run, self.resume_btn = self.resumes.run, self.resumes.button
        self.plot = LossPlot(TRAINABLE["segment"][3])
        self.extend([self.task, self.base, self.upsampling, self.pairs, self.image, self.target, self.region,
                     self.name, self.budget, self.epochs, self.minutes, self.lr, *self.validation.widgets(),
                     self.batch, self.patch, self.augment, self.split, self.run_btn, self.stop_btn, self.cancel_btn,
                     self.resume_run, self.resume_btn, self.resumes.discard, self.progress, self.status])
        self.native.layout().addWidget(self.plot.native)
        self._theme_plot()
        self._named_by_user = False
        self._t0 = 0.0
        self._budget_s: float | None = None
        self._job: dict = {}
        self._stopping = False
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn.clicked.connect(self.resume)
        self.resumes.discard.clicked.connect(self.discard_run)
        self.task.changed.connect(self._on_task)
        self.base.changed.connect(self._on_base)
        self.image.changed.connect(self._suggest_name)
        self.pairs.changed.connect(self._on_pairs)
        self.name.changed.connect(self._on_name_edit)
        self.budget.changed.connect(self._on_budget)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)  # a time budget of a network without one of its own
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._budget_over)
        self._suggest_name()
        self._on_base()
        self._refresh_resume()
        install_close_guard(self)
        warm_imports()

    def _theme_plot(self):
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            self.plot.set_colors(theme.background.as_hex(), theme.text.as_hex())
        except Exception:  # noqa: BLE001 - an unknown theme keeps matplotlib's colours
            pass

    # -- choices ----------------------------------------------------------------------------
    def _base_choices(self, *_):
        task = self.task.value if hasattr(self, "task") else "segment"
        _, backends, fresh, _ = TRAINABLE[task]
        cards = [c for c in self.registry.list(task) if c.backend in backends and c.path]
        return [(f"fresh {fresh} network", FRESH)] + [(f"{c.name}  ({c.source})", c.name) for c in cards]

    def _layers(self, kind: str):
        return [ly for ly in self.viewer.layers if type(ly).__name__ == kind]

    def _target_choices(self, *_):
        kind = TRAINABLE[self.task.value if hasattr(self, "task") else "segment"][0]
        out = []
        for ly in self._layers(kind):
            tag = " (result)" if RESULT_KEY in (ly.metadata or {}) else ""
            out.append((f"{ly.name}{tag}", ly))
        return out

    def _region_choices(self, *_):
        target = getattr(self, "target", None)
        return [(NO_REGION, None)] + [(ly.name, ly) for ly in self._layers("Shapes")
                                      if target is None or ly is not target.value]

    def _refresh_resume(self):
        self.resumes.refresh(self.runner.running)

    def reset_choices(self, *args):
        super().reset_choices(*args)
        if hasattr(self, "resume_btn"):
            self._refresh_resume()

    def _on_task(self, *_):
        self.base.reset_choices()
        self.target.reset_choices()
        self.region.reset_choices()
        self.validation.reset_choices()
        self.plot.clear(TRAINABLE[self.task.value][3])
        self._on_base()
        self._suggest_name()

    def _on_base(self, *_):
        fresh_unet = self.task.value == "segment" and self.base.value in (None, FRESH)
        self.upsampling.visible = fresh_unet
        self.patch.visible = self.task.value == "segment"
        self._suggest_name()

    def _on_pairs(self, *_):
        one = self.pairs.value == ONE_PAIR
        self.image.visible = self.target.visible = self.region.visible = one

    def _on_budget(self, *_):
        self.epochs.visible = self.budget.value == EPOCHS
        self.minutes.visible = self.budget.value == MINUTES

    def _on_name_edit(self, *_):
        if not getattr(self, "_naming", False):
            self._named_by_user = True

    def _suggest_name(self, *_):
        if self._named_by_user:
            return
        from ..backends.training.naming import free_name

        base = self.base.value if self.base.value not in (None, FRESH) else TRAINABLE[self.task.value][2]
        img = self.image.value
        stem = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in (img.name if img is not None else ""))
        self._naming = True
        try:
            self.name.value = free_name(f"{base}-{stem}".strip("-")[:60] or base, self.registry)
        finally:
            self._naming = False

    # -- the training request -----------------------------------------------------------------
    def _reader(self):
        from ._train_layers import boxes_pair, labels_pair

        return labels_pair if self.task.value == "segment" else boxes_pair

    def _training_layers(self) -> list[tuple]:
        """The training ``(image, annotation)`` layers: the chosen pair, or every annotation layer
        with its image (less the validation annotation)."""
        from ._train_layers import auto_pairs

        if self.pairs.value == ONE_PAIR:
            return [(self.image.value, self.target.value)]
        kind = TRAINABLE[self.task.value][0]
        found, unpaired = auto_pairs(self.viewer.layers, kind)
        if self.validation.chosen:
            found = [(im, ann) for im, ann in found if ann is not self.validation.target.value]
        if not found:
            extra = f" ({', '.join(unpaired)} have no image of the same name)" if unpaired else ""
            raise InputError(f"no {kind} layer paired with an image{extra}")
        self._unpaired = unpaired
        return found

    def training_pairs(self, layers: list | None = None) -> list:
        """The chosen layers (or ``layers``: :meth:`_training_layers`) as training pairs (numpy)."""
        read, layers = self._reader(), layers or self._training_layers()
        if self.pairs.value == ONE_PAIR:
            return [read(*layers[0], self.region.value)]
        return [read(im, ann) for im, ann in layers]

    def validation_pairs(self, layers: list | None = None) -> list | None:
        """The chosen validation layers as pairs, or ``None`` (the automatic split)."""
        if not self.validation.chosen:
            return None
        return self.validation.pairs(self._reader(), layers or self._training_layers())

    def options(self, resume: bool = False):
        """The widget's settings as :class:`~..backends.training.plan.TrainOptions`."""
        from ..backends.training.plan import TrainOptions

        lr_text = (self.lr.value or "auto").strip().lower()
        try:
            lr = None if lr_text == "auto" else float(lr_text)
        except ValueError:
            raise InputError(f"the learning rate must be a number or 'auto', got {self.lr.value!r}") from None
        minutes = float(self.minutes.value) if self.budget.value == MINUTES else None
        epochs = int(self.epochs.value) if self.budget.value == EPOCHS and self.epochs.value else None
        fresh_unet = self.task.value == "segment" and self.base.value in (None, FRESH)
        return TrainOptions(epochs=epochs, minutes=minutes, learning_rate=lr,
                            val_fraction=float(self.val_fraction.value), batch_size=int(self.batch.value) or None,
                            patch_size=(int(self.patch.value) or None) if self.task.value == "segment" else None,
                            flips=bool(self.flips.value), turns=bool(self.turns.value),
                            intensity=bool(self.intensity.value), scale=bool(self.scale.value),
                            upsampling=self.upsampling.value if fresh_unet else None, resume=resume,
                            extra=dict(self.advanced), command="napari-cnnvision Train widget",
                            source="napari layers")

    def training_request(self, name: str = "", resume: bool = False):
        """The widget's current choices read from its layers (on the GUI thread: references to
        their data); returns ``build(check_name=True)``, which makes the job request from them:
        ``(name, plan)``, the new model's name checked (:func:`~..backends.training.naming.check_new_name`)
        and :func:`~..backends.training.plan.plan` (the costly part, for a thread)."""
        from ..backends.training.plan import plan

        self._unpaired = []
        task, base, registry = self.task.value, self.base.value, self.registry
        layers = self._training_layers()
        pairs, val_pairs, opts = self.training_pairs(layers), self.validation_pairs(layers), self.options(resume)

        def build(check_name: bool = True):
            from ..backends.training.naming import check_new_name

            checked = check_new_name(name, registry) if check_name else name
            card = None if base in (None, FRESH) else registry.get(base)
            return checked, plan(task, pairs, card, opts, name=checked, out_dir=registry.user_dir,
                                 val_pairs=val_pairs)

        return build

    def training_plan(self, name: str = "", resume: bool = False):
        """The job request of the widget's current choices, built here (no job is started)."""
        return self.training_request(name, resume)(check_name=False)[1]

    # -- running ----------------------------------------------------------------------------
    def discard_run(self, *_):
        """Delete the interrupted run chosen in "interrupted run" (asks first)."""
        message = self.resumes.discard_chosen(self.native)
        if message:
            self.status.value = message
        self._refresh_resume()

    def resume(self, *_):
        """Continue the interrupted run chosen in "interrupted run" (same layers and settings)."""
        if self.resume_run.value:
            self._naming = True
            try:
                self.name.value = self.resume_run.value
            finally:
                self._naming = False
            self.run(resume=True)

    def run(self, *_, resume: bool = False):
        """The Train press: the layers are read here, the request is built in a thread
        (:func:`._train_start.plan_then_start`), then :meth:`_launch` starts the job."""
        from ._train_start import as_input_error, plan_then_start

        if self.runner.running:
            return
        try:
            build = self.training_request(self.name.value, resume=resume)
        except (ValueError, OSError, LookupError) as exc:
            self.report_error(as_input_error(exc))
            return
        self.split.value = ""
        self.plot.clear(TRAINABLE[self.task.value][3])  # a new run: the former one's curves go
        self.stop_btn.enabled = self.resume_btn.enabled = self.resumes.discard.enabled = False
        job = {"task": self.task.value, "metric": TRAINABLE[self.task.value][3], "unpaired": list(self._unpaired),
               "budget_s": float(self.minutes.value) * 60 if self.budget.value == MINUTES else None}
        plan_then_start(self, build, lambda named: self._launch(*named, job, resume), on_failed=self._refresh_resume)

    def _launch(self, name: str, plan, job: dict, resume: bool = False):
        """Start the training job of ``plan`` (on the GUI thread, once the request is built);
        ``job``: the choices at the Train press (task, metric label, unpaired layers, time budget)."""
        job_name, kwargs, summary, stop_after = plan
        unpaired = job["unpaired"]
        self.split.value = f"split: {summary}" + (f" (left out: {', '.join(unpaired)})" if unpaired else "")
        self._job = {**job, "name": name}
        self._t0 = time.monotonic()
        self._stopping = False
        self._budget_s = job["budget_s"]
        self.set_busy(True, f"{'resuming' if resume else 'training'} {name!r} in the compute worker...")
        self.stop_btn.enabled = True
        self.resume_btn.enabled = self.resumes.discard.enabled = False
        guard_dock_button(self)
        if stop_after:
            self._timer.start(int(stop_after * 1000))

        def finished():
            self._timer.stop()
            self.set_busy(False)
            self.stop_btn.enabled = False
            self._refresh_resume()

        self.runner.start(job_name, kwargs, on_progress=self._on_progress, on_metrics=self._on_metrics,
                          on_done=self._on_done, on_error=self.report_error, on_finished=finished)

    def _on_done(self, result):
        from ..backends.training.outcome import job_outcome

        task = self._job.get("task", "segment")
        out = job_outcome(result, self._job.get("name"), task)
        self.progress.value = 100
        self.status.value = f"{out.describe()}; it is listed in the {WIDGET_OF[task]} widget now"
        self._named_by_user = False
        refresh_model_lists(self.viewer)
        self.base.reset_choices()
        self._suggest_name()
