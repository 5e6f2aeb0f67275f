"""The Train dock widget: fine-tune or train a model on the annotations in napari layers.

Segmentation: an Image + a Labels layer (painted, or a Segment result corrected by hand);
detection: an Image + a Shapes layer of rectangles with a ``class`` feature (or a Detect result
corrected by hand); localization: a stack with one rectangle per frame. "pairs" takes the chosen
pair, or every annotation layer with its image (a result layer knows its image; else the image
whose name the layer's begins with). Partial annotation is the normal case: only the valid region
(the bounding box of the annotation per frame, or the rectangles of an optional "fully annotated"
Shapes layer) is used. The widget reads the layers (:mod:`._train_layers`); the training request
is built by :mod:`..backends.training.plan`, as for the ``train`` command and ``api.train``. The
job runs in the compute worker's training process; a live plot shows the losses and the
validation metric per epoch; Stop ends after the current epoch and keeps the best model, which
is registered and listed in the other widgets. Closing the widget or napari while a training
runs asks first, then stops it the same way. An interrupted run can be resumed.
"""
from __future__ import annotations

import time

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, PushButton, SpinBox, create_widget

from ..core.axes import InputError
from ..core.registry import ModelRegistry
from ..layers.common import RESULT_KEY
from ._base import JobWidget, StatusLabel
from ._loss_plot import LossPlot

__all__ = ["TrainWidget", "refresh_model_lists", "FRESH", "TRAINABLE"]
FRESH = "(fresh network)"
NO_REGION = "(the annotation's bounding box)"
ONE_PAIR, ALL_PAIRS = "this image + annotation", "every annotation layer with its image"
#: task -> (annotation layer type, backends that train from layers here, fresh backend, metric label)
TRAINABLE = {"segment": ("Labels", ("unet", "stardist2d"), "unet", "AP@0.5"),
             "detect": ("Shapes", ("yolo", "fasterrcnn"), "yolo", "mAP@0.5"),
             "localize": ("Shapes", (), "localizer", "accuracy")}  # the localizer trains fresh only
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


def _fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class TrainWidget(JobWidget):
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
        self.val_fraction = FloatSpinBox(label="validation part", min=0.05, max=0.5, step=0.05, value=0.2)
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
        self.resume_run = ComboBox(label="interrupted run", choices=self._resume_choices, visible=False)
        self.resume_btn = PushButton(text="Resume", visible=False,
                                     tooltip="continue the interrupted run from its last checkpoint, on the "
                                             "same layers and settings")
        self.plot = LossPlot(TRAINABLE["segment"][3])
        self.extend([self.task, self.base, self.upsampling, self.pairs, self.image, self.target, self.region,
                     self.name, self.budget, self.epochs, self.minutes, self.lr, self.val_fraction, self.batch,
                     self.patch, self.augment, self.split, self.run_btn, self.stop_btn, self.cancel_btn,
                     self.resume_run, self.resume_btn, self.progress, self.status])
        self.native.layout().addWidget(self.plot.native)
        self._theme_plot()
        self._named_by_user = False
        self._t0 = 0.0
        self._budget_s: float | None = None
        self._job: dict = {}
        self._stopping = False
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn.clicked.connect(self.resume)
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
        self._install_close_guard()

    def _theme_plot(self):
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            self.plot.set_colors(theme.background.as_hex(), theme.text.as_hex())
        except Exception:  # noqa: BLE001 - an unknown theme keeps matplotlib's colours
            pass

    # -- ask before close -----------------------------------------------------------------------
    def _install_close_guard(self):
        from ._close_guard import CloseGuard

        self.close_guard = CloseGuard(self)
        qt_window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        self.close_guard.watch(qt_window)
        import weakref

        from qtpy.QtCore import QEvent, QObject

        ref = weakref.ref(self)

        class _OnDock(QObject):  # once docked: guard the dock's close button too
            def eventFilter(self, obj, ev):  # noqa: N802
                if ev.type() == QEvent.Type.ParentChange and ref() is not None:
                    from qtpy.QtCore import QTimer

                    # the dock sets its title bar after taking the widget
                    QTimer.singleShot(0, lambda: ref() is not None and ref()._guard_dock_button())
                return False

        self._on_dock = _OnDock(self.native)
        self.native.installEventFilter(self._on_dock)
        self._guard_dock_button()

    def _guard_dock_button(self):
        """The close button of the napari dock holding this widget (napari's title bar), if any."""
        w = self.native.parent()
        while w is not None and not hasattr(w, "destroyOnClose"):
            w = w.parent()
        if w is None:
            return
        bar = w.titleBarWidget() if hasattr(w, "titleBarWidget") else None
        button = getattr(bar, "close_button", None)
        if button is not None:
            self.close_guard.watch(button, mouse=True)

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

    def _resume_choices(self, *_):
        try:
            from ..backends.checkpoint import interrupted_runs
        except ImportError:  # checkpoints not in this version
            return []
        try:
            return interrupted_runs(self.registry.user_dir)
        except OSError:
            return []

    def _refresh_resume(self):
        self.resume_run.reset_choices()
        has = bool(self.resume_run.choices)
        self.resume_run.visible = self.resume_btn.visible = has
        self.resume_btn.enabled = has and not self.runner.running

    def reset_choices(self, *args):
        super().reset_choices(*args)
        if hasattr(self, "resume_btn"):
            self._refresh_resume()

    def _on_task(self, *_):
        self.base.reset_choices()
        self.target.reset_choices()
        self.region.reset_choices()
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
    def training_pairs(self) -> list:
        """The chosen layers as training pairs (numpy; no job is started)."""
        from ._train_layers import auto_pairs, boxes_pair, labels_pair

        task = self.task.value
        read = labels_pair if task == "segment" else boxes_pair
        if self.pairs.value == ONE_PAIR:
            return [read(self.image.value, self.target.value, self.region.value)]
        found, unpaired = auto_pairs(self.viewer.layers, TRAINABLE[task][0])
        if not found:
            extra = f" ({', '.join(unpaired)} have no image of the same name)" if unpaired else ""
            raise InputError(f"no {TRAINABLE[task][0]} layer paired with an image{extra}")
        self._unpaired = unpaired
        return [read(im, ann) for im, ann in found]

    @staticmethod
    def _boxes_of(img_layer, shp):
        """``(annotation, image)`` of an Image + Shapes layer: ``annotation.boxes`` / ``.classes`` /
        ``.frame`` (the layer checks of :func:`._train_layers.boxes_pair`)."""
        from types import SimpleNamespace

        from ._train_layers import boxes_pair

        p = boxes_pair(img_layer, shp)
        return SimpleNamespace(boxes=p.boxes, classes=p.classes, frame=p.frames), p.image

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

    def training_plan(self, name: str = "", resume: bool = False):
        """The job request of the widget's current choices (:func:`~..backends.training.plan.plan`)."""
        from ..backends.training.plan import plan

        card = None if self.base.value in (None, FRESH) else self.registry.get(self.base.value)
        self._unpaired = []
        return plan(self.task.value, self.training_pairs(), card, self.options(resume), name=name,
                    out_dir=self.registry.user_dir)

    # -- running ----------------------------------------------------------------------------
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
        from ..backends.training.naming import check_new_name

        if self.runner.running:
            return
        try:
            name = check_new_name(self.name.value, self.registry)
            job, kwargs, summary, stop_after = self.training_plan(name, resume=resume)
        except (InputError, ValueError, OSError, LookupError) as exc:
            self.report_error(exc if isinstance(exc, InputError) else InputError(str(exc)))
            return
        unpaired = getattr(self, "_unpaired", [])
        self.split.value = f"split: {summary}" + (f" (left out: {', '.join(unpaired)})" if unpaired else "")
        self.plot.clear(TRAINABLE[self.task.value][3])
        self._job = {"name": name, "task": self.task.value}
        self._t0 = time.monotonic()
        self._stopping = False
        self._budget_s = float(self.minutes.value) * 60 if self.budget.value == MINUTES else None
        self.set_busy(True, f"{'resuming' if resume else 'training'} {name!r} in the compute worker...")
        self.stop_btn.enabled = True
        self.resume_btn.enabled = False
        self._guard_dock_button()
        if stop_after:
            self._timer.start(int(stop_after * 1000))

        def finished():
            self._timer.stop()
            self.set_busy(False)
            self.stop_btn.enabled = False
            self._refresh_resume()

        self.runner.start(job, kwargs, on_progress=self._on_progress, on_metrics=self._on_metrics,
                          on_done=self._on_done, on_error=self.report_error, on_finished=finished)

    def stop(self, *_):
        if self.runner.running:
            self.runner.stop()
            self._stopping = True
            self.stop_btn.enabled = False
            self.status.value = "stopping after this epoch (the best model so far is kept)..."

    def _budget_over(self):
        if self.runner.running:
            self.runner.stop()
            self._stopping = True
            self.status.value = "time is up: stopping after this epoch (the best model so far is kept)..."

    def _on_metrics(self, ev):
        m = ev.metrics
        if "epoch" not in m:
            return
        train = m.get("train_loss", m.get("loss"))
        metric = next((m[k] for k in ("val_ap50", "val_map", "val_accuracy") if k in m), None)
        self.plot.add(m["epoch"], train, m.get("val_loss"), metric)

    def _fraction(self, ev) -> float | None:
        if self._budget_s:
            return min(1.0, (time.monotonic() - self._t0) / self._budget_s)
        return ev.fraction

    def _on_progress(self, ev):
        f = self._fraction(ev)
        if f is not None:
            self.progress.value = int(round(100 * f))
        if not ev.message:
            return
        msg = ev.message
        if self.plot.epochs and ev.message.startswith("epoch"):
            label = TRAINABLE[self._job.get("task", "segment")][3]
            msg += (f" · train loss {self.plot.train[-1]:.3f} · val loss {self.plot.val[-1]:.3f} · "
                    f"{label} {self.plot.metric[-1]:.3f}")
            if f:
                elapsed = time.monotonic() - self._t0
                msg += f" · ETA {_fmt_time(elapsed * (1 - f) / f)}"
        if self._stopping and not msg.startswith("saved"):
            msg = "stopping... " + msg
        self.status.value = msg

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
