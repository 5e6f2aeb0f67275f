"""The Train dock widget: fine-tune or train a model on the annotations in napari layers.

Segmentation: an Image + a Labels layer (painted, or a Segment result corrected by hand);
detection: an Image + a Shapes layer of rectangles with a ``class`` feature (or a Detect result
corrected by hand). Partial annotation is the normal case: only the valid region (the bounding
box of the annotation per frame, or the rectangles of an optional "fully annotated" Shapes
layer) is used (:mod:`..backends.training`). The job runs in the compute worker's training
process; a live plot shows the losses and the validation metric per epoch; Stop ends after the
current epoch and keeps the best model, which is registered and listed in the other widgets.
"""
from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, LineEdit, PushButton, SpinBox, create_widget

from ..core.axes import InputError
from ..core.registry import ModelRegistry
from ..layers.common import RESULT_KEY
from ._base import JobWidget, StatusLabel
from ._loss_plot import LossPlot

__all__ = ["TrainWidget", "refresh_model_lists", "FRESH", "TRAINABLE"]
FRESH = "(fresh network)"
NO_REGION = "(the annotation's bounding box)"
#: task -> (annotation layer type, backends that train from layers here, fresh backend, metric label)
TRAINABLE = {"segment": ("Labels", ("unet",), "unet", "AP@0.5"),
             "detect": ("Shapes", ("yolo",), "yolo", "mAP@0.5"),
             "localize": ("Shapes", (), "localizer", "accuracy")}  # the localizer trains fresh only
WIDGET_OF = {"segment": "Segment", "detect": "Detect", "localize": "Localize"}
AUTO_LR = {"segment": (1e-3, 3e-4), "detect": (2e-3, 6e-4), "localize": (2e-3, 6e-4)}  # (fresh, fine-tune)
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
        super().__init__(napari_viewer, registry, labels=True)
        #: extra trainer settings merged last (network size, steps; for scripts and tests)
        self.advanced: dict = {}
        self.task = ComboBox(label="task", choices=list(TRAINABLE), value="segment")
        self.base = ComboBox(label="base model", choices=self._base_choices,
                             tooltip="fine-tune a model of this task, or train a fresh network")
        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.target = ComboBox(label="annotation", choices=self._target_choices,
                               tooltip="Labels (segment) or Shapes rectangles with a 'class' feature (detect); "
                                       "the plugin's result layers, corrected by hand, work too")
        self.region = ComboBox(label="fully annotated", choices=self._region_choices,
                               tooltip="where the annotation is complete: by default its bounding box; "
                                       "or the rectangles of a Shapes layer")
        self.name = LineEdit(label="new model name", value="")
        self.budget = ComboBox(label="train for", choices=[EPOCHS, MINUTES], value=EPOCHS)
        self.epochs = SpinBox(label="epochs", min=0, max=10000, value=0,
                              tooltip="0: a default from the number of annotated objects")
        self.minutes = FloatSpinBox(label="minutes", min=0.1, max=1440.0, step=0.5, value=5.0, visible=False)
        self.lr = LineEdit(label="learning rate", value="auto", tooltip="'auto': 1e-3 for a fresh network, "
                                                                         "3e-4 when fine-tuning")
        self.val_fraction = FloatSpinBox(label="validation part", min=0.05, max=0.5, step=0.05, value=0.2)
        self.split = StatusLabel(label="")
        self.stop_btn = PushButton(text="Stop (keep the best so far)", enabled=False)
        self.plot = LossPlot(TRAINABLE["segment"][3])
        self.extend([self.task, self.base, self.image, self.target, self.region, self.name, self.budget,
                     self.epochs, self.minutes, self.lr, self.val_fraction, self.split, self.run_btn,
                     self.stop_btn, self.cancel_btn, self.progress, self.status])
        self.native.layout().addWidget(self.plot.native)
        self._theme_plot()
        self._named_by_user = False
        self._t0 = 0.0
        self._budget_s: float | None = None
        self._job: dict = {}
        self._stopping = False
        self.stop_btn.clicked.connect(self.stop)
        self.task.changed.connect(self._on_task)
        self.base.changed.connect(self._suggest_name)
        self.image.changed.connect(self._suggest_name)
        self.name.changed.connect(self._on_name_edit)
        self.budget.changed.connect(self._on_budget)
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)  # a time budget of a network without one of its own
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._budget_over)
        self._suggest_name()

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

    def _on_task(self, *_):
        self.base.reset_choices()
        self.target.reset_choices()
        self.region.reset_choices()
        self.plot.clear(TRAINABLE[self.task.value][3])
        self._suggest_name()

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

    # -- the training set -------------------------------------------------------------------
    def _regions(self, target_ndim: int):
        """The rectangles of the "fully annotated" layer as Regions (None: the default)."""
        from ..backends.training.regions import Region
        from ..layers.annotations import shapes_to_annotations

        layer = self.region.value
        if layer is None:
            return None
        if len(layer.data) == 0:
            raise InputError(f"the 'fully annotated' layer {layer.name!r} has no rectangles")
        ds = shapes_to_annotations(layer.data, {"shape_type": layer.shape_type, "name": layer.name,
                                                "ndim": layer.ndim})
        a = ds.images[0]
        frames = a.frame if a.frame is not None else np.zeros(len(a.boxes), int)
        return [Region(int(f), int(np.floor(b[0])), int(np.floor(b[1])), int(np.ceil(b[2])), int(np.ceil(b[3])))
                for b, f in zip(a.boxes, frames)]

    def _settings(self, defaults: dict, fine_tune: bool) -> tuple[dict, dict]:
        lr_text = (self.lr.value or "auto").strip().lower()
        try:
            lr = AUTO_LR[self.task.value][int(fine_tune)] if lr_text == "auto" else float(lr_text)
        except ValueError:
            raise InputError(f"the learning rate must be a number or 'auto', got {self.lr.value!r}") from None
        if not 0 < lr < 1:
            raise InputError(f"the learning rate must lie between 0 and 1, got {lr}")
        s = {k: v for k, v in defaults.items() if k != "object_size"}
        if self.budget.value == EPOCHS and self.epochs.value:
            s["epochs"] = int(self.epochs.value)
        return s, {"lr": lr}

    def segmentation_job(self) -> tuple[str, dict, str]:
        from ..backends.training.segmentation import segmentation_set

        img_layer, lab_layer = self.image.value, self.target.value
        if img_layer is None or lab_layer is None:
            raise InputError("choose an image layer and a Labels layer with your annotation")
        image, labels = np.asarray(img_layer.data), np.asarray(lab_layer.data)
        valid = None
        regions = self._regions(labels.ndim)
        if regions is not None:
            valid = np.zeros(labels.shape, bool)
            for r in regions:
                (valid if labels.ndim == 2 else valid[r.frame])[r.slices] = True
        ts = segmentation_set(image, labels, valid=valid, val_fraction=float(self.val_fraction.value))
        card = None if self.base.value in (None, FRESH) else self.registry.get(self.base.value)
        s, extra = self._settings(ts.defaults, card is not None)
        s["learning_rate"] = extra["lr"]
        if self.budget.value == MINUTES:
            s["epochs"] = 10000  # the widget stops it when the time is up
        s.update(self.advanced)
        data = (f"napari layers: image '{img_layer.name}' {image.shape} + labels '{lab_layer.name}' "
                f"({ts.n_objects} objects); {ts.summary()}")
        kwargs = {"images": ts.images, "masks": ts.masks, "val_images": ts.val_images, "val_masks": ts.val_masks,
                  "settings": s, "init_folder": card.path if card is not None else None, "data": data,
                  "command": "napari-cnnvision Train widget"}
        return "unet.train", kwargs, ts.summary()

    def detection_job(self) -> tuple[str, dict, str]:
        from ..backends.dispatch import card_payload
        from ..backends.training.detection import detection_set

        img_layer, shp = self.image.value, self.target.value
        a, image = self._boxes_of(img_layer, shp)
        dset = detection_set(image, a.boxes, a.classes, frames=a.frame, valid_regions=self._regions(image.ndim),
                             val_fraction=float(self.val_fraction.value))
        card = None if self.base.value in (None, FRESH) else self.registry.get(self.base.value)
        s, extra = self._settings(dset.defaults, card is not None)
        s["lr"] = extra["lr"]
        if self.budget.value == MINUTES:
            s["epochs"], s["time_budget_min"] = 10000, float(self.minutes.value)
        config = self.advanced.get("config")
        s.update({k: v for k, v in self.advanced.items() if k != "config"})
        data = {"image": img_layer.name, "image_shape": list(image.shape), "boxes": shp.name,
                "n_boxes": len(a.boxes), "summary": dset.summary(), "dropped_at_split": dset.dropped}
        kwargs = {"train": dset.train, "val": dset.val, "classes": dset.classes, "settings": s,
                  "base": card_payload(card) if card is not None else None, "config": config,
                  "normalization": dset.normalization, "data": data}
        return "yolo.train", kwargs, dset.summary()

    @staticmethod
    def _boxes_of(img_layer, shp):
        """The rectangles of a Shapes layer (boxes, classes, frames) and the image as an array."""
        from ..layers.annotations import shapes_to_annotations

        if img_layer is None or shp is None:
            raise InputError("choose an image layer and a Shapes layer of rectangles")
        if len(shp.data) == 0:
            raise InputError(f"the Shapes layer {shp.name!r} is empty: draw some rectangles first")
        odd = sum(t != "rectangle" for t in shp.shape_type)
        if odd:
            raise InputError(f"{odd} shape(s) of {shp.name!r} are not rectangles; training takes "
                             "rectangles only (delete or redraw them)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = shapes_to_annotations(shp.data, {"shape_type": shp.shape_type, "features": shp.features,
                                                  "name": shp.name, "ndim": shp.ndim})
        if ds.warnings:
            raise InputError(f"{shp.name!r}: {ds.warnings[0]}")
        return ds.images[0], np.asarray(img_layer.data)

    def localization_job(self) -> tuple[str, dict, str]:
        from ..backends.training.localization import localization_set

        img_layer, shp = self.image.value, self.target.value
        a, image = self._boxes_of(img_layer, shp)
        ls = localization_set(image, a.boxes, a.classes, a.frame, val_fraction=float(self.val_fraction.value))
        s, extra = self._settings(ls.defaults, False)
        s["lr"] = extra["lr"]
        if self.budget.value == MINUTES:
            s["epochs"], s["time_budget_s"] = 100000, float(self.minutes.value) * 60
        s.update(self.advanced)
        data = (f"napari layers: image '{img_layer.name}' {image.shape} + rectangles '{shp.name}' "
                f"({len(a.boxes)} frames annotated); {ls.summary()}")
        kwargs = {"images": ls.images, "boxes": ls.boxes, "labels": ls.labels, "class_names": ls.classes,
                  "val_images": ls.val_images, "val_boxes": ls.val_boxes, "val_labels": ls.val_labels,
                  "settings": s, "data": data}
        return "localizer.train", kwargs, ls.summary()

    # -- running ----------------------------------------------------------------------------
    def run(self, *_):
        from ..backends.training.naming import check_new_name

        if self.runner.running:
            return
        try:
            name = check_new_name(self.name.value, self.registry)
            job, kwargs, summary = {"segment": self.segmentation_job, "detect": self.detection_job,
                                    "localize": self.localization_job}[self.task.value]()
        except (InputError, ValueError, OSError, LookupError) as exc:
            self.report_error(exc if isinstance(exc, InputError) else InputError(str(exc)))
            return
        kwargs["name"] = name
        self.split.value = f"split: {summary}"
        self.plot.clear(TRAINABLE[self.task.value][3])
        self._job = {"name": name, "task": self.task.value}
        self._t0 = time.monotonic()
        self._stopping = False
        self._budget_s = float(self.minutes.value) * 60 if self.budget.value == MINUTES else None
        self.set_busy(True, f"training {name!r} in the compute worker...")
        self.stop_btn.enabled = True
        if self._budget_s and job == "unet.train":
            self._timer.start(int(self._budget_s * 1000))

        def finished():
            self._timer.stop()
            self.set_busy(False)
            self.stop_btn.enabled = False

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
        get = (lambda k: result.get(k)) if isinstance(result, dict) else (lambda k: getattr(result, k))
        metrics = get("metrics") or {}
        metrics = metrics.get("val", metrics)
        score = next((metrics[k] for k in ("ap@0.5", "map@0.5", "accuracy") if k in metrics), None)
        name = self._job.get("name")
        n, best = get("epochs_run"), get("best_epoch")
        how = f"stopped after {n} epoch(s)" if get("stopped") else f"{n} epoch(s)"
        self.progress.value = 100
        task = self._job.get("task", "segment")
        self.status.value = (f"saved model {name!r} ({how}, best epoch {best}, val {TRAINABLE[task][3]} "
                             f"{score if score is None else round(float(score), 3)}); it is listed in the "
                             f"{WIDGET_OF[task]} widget now")
        self._named_by_user = False
        refresh_model_lists(self.viewer)
        self.base.reset_choices()
        self._suggest_name()
