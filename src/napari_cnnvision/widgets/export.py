"""The Export dock widget: a training-ready dataset folder from an image layer and its annotations.

Inputs: the Image layer (a stack exports one image per frame), a Shapes layer with the boxes
(feature ``class``; ellipses, polygons, lines and rotated rectangles are written as their bounding
boxes, with a warning in the status line) and/or a Labels layer (instance masks: the ``masks``
format; for the other formats its objects become the boxes when no Shapes layer is chosen), the
format, an optional validation fraction and the output folder. The export runs in a thread
(numpy + file writes only, :func:`~napari_cnnvision.core.formats.export.export_dataset`); Cancel
stops it and keeps the folder as it was.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, SpinBox

from ..core.formats.export import EXPORT_FORMATS
from ..core.formats.voc import AnnotationError
from ._base import JobWidget, StatusLabel

NONE = "(none)"
SHAPES_NOTE = "Ellipses, polygons, lines and rotated rectangles are exported as their bounding boxes (with a warning)."


def _layers(viewer, kind: str) -> list[str]:
    return [lyr.name for lyr in viewer.layers if lyr._type_string == kind]


def build_items(image, shapes=None, labels=None, label_class: str = "object"):
    """ExportItems, class names and warnings from napari layers: the boxes of ``shapes`` or, without
    it, the objects of ``labels`` (boxes from the masks, each mask kept for COCO / mask TIFFs)."""
    from ..core.formats.annotations import ImageAnnotations
    from ..core.formats.export import ExportItem
    from ..layers.annotations import labels_to_annotations, shapes_to_annotations

    data = image.data
    extra = data.ndim - (3 if image.rgb else 2)
    if extra > 1:
        raise AnnotationError(f"{image.name}: {data.ndim} axes; export takes a 2-D image or one stack axis")
    frames = extra == 1
    notes: list[str] = []
    if shapes is not None:
        meta = {"name": shapes.name, "shape_type": list(shapes.shape_type), "features": shapes.features,
                "metadata": shapes.metadata, "ndim": shapes.ndim}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = shapes_to_annotations(list(shapes.data), meta, (data, {"name": image.name, "rgb": image.rgb},
                                                                  "image"))
        notes.extend(str(w.message) for w in caught)
        if len(ds.images) > 1:  # the reader's multi-image layer: plane i is image i
            return [ExportItem(data[i], a, rgb=image.rgb) for i, a in enumerate(ds.images)], ds.class_names, notes
        a = ds.images[0]
        a.image = image.name
        return [ExportItem(data, a, frames=frames, rgb=image.rgb)], ds.class_names, notes
    if labels is None:
        raise AnnotationError("choose a Shapes layer (boxes) or a Labels layer (masks) to export")
    lab = np.asarray(labels.data)
    want = tuple(data.shape[:-1] if image.rgb else data.shape)
    if lab.shape != want:
        raise AnnotationError(f"{labels.name}: shape {lab.shape} does not match the image's {want}")
    ds = labels_to_annotations(lab, {"name": image.name}, label_class)  # renumbered: label k + 1 = box k
    if not frames:
        return [ExportItem(data, ds.images[0], rgb=image.rgb)], ds.class_names, notes
    per = ds.images
    frame = np.concatenate([np.full(len(a), k, np.int64) for k, a in enumerate(per)])
    stack = ImageAnnotations(image.name, lab.shape[-2:], np.concatenate([a.boxes for a in per]),
                             [label_class] * len(frame), frame=frame)
    stack.labels = np.stack([a.labels.astype(np.uint32) for a in per])
    return [ExportItem(data, stack, frames=True, rgb=image.rgb)], ds.class_names, notes


class ExportWidget(JobWidget):
    run_text = "Export"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        v = napari_viewer
        self.image = ComboBox(label="image", choices=lambda *_: _layers(v, "image"))
        self.shapes = ComboBox(label="boxes (Shapes)", choices=lambda *_: [NONE, *_layers(v, "shapes")])
        self.labels = ComboBox(label="masks (Labels)", choices=lambda *_: [NONE, *_layers(v, "labels")])
        self.label_class = LineEdit(label="class of the masks", value="object")
        self.format = ComboBox(label="format", choices=list(EXPORT_FORMATS), value="yolo")
        self.val = FloatSpinBox(label="validation fraction", min=0.0, max=0.9, step=0.05, value=0.0)
        self.seed = SpinBox(label="split seed", min=0, max=2**31 - 1, value=0)
        self.out = FileEdit(label="folder", mode="d")
        self.note = Label(value=SHAPES_NOTE)
        self.note.native.setWordWrap(True)
        self.summary = StatusLabel()
        self.extend([self.image, self.shapes, self.labels, self.label_class, self.format, self.val, self.seed,
                     self.out, self.note, *self.controls(), self.summary])
        self._stop = threading.Event()
        self._thread = None
        self._latest = None  # the export thread's last progress event; the GUI timer shows it
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._show_progress)
        for event in (v.layers.events.inserted, v.layers.events.removed):
            event.connect(self._refresh)
        self._refresh()

    def _refresh(self, *_):
        for box in (self.image, self.shapes, self.labels):
            box.reset_choices()
        shapes = [lyr for lyr in self.viewer.layers if lyr._type_string == "shapes"]
        if shapes and self.shapes.value == NONE:
            self.shapes.value = shapes[-1].name

    def _layer(self, name):
        return None if name in (None, NONE) else self.viewer.layers[name]

    def run(self, *_):
        from napari.qt.threading import thread_worker

        from ..core.formats.export import export_dataset
        from ..core.progress import Progress

        if self._thread is not None:
            return
        try:
            if not self.image.value:
                raise AnnotationError("open or choose an image layer")
            if not str(self.out.value) or str(self.out.value) == ".":
                raise AnnotationError("choose the output folder")
            image, shapes, labels = (self._layer(self.image.value), self._layer(self.shapes.value),
                                     self._layer(self.labels.value))
            fmt = self.format.value
            if fmt == "masks" and labels is None:
                raise AnnotationError("the masks format needs a Labels layer")
            items, classes, notes = build_items(image, None if fmt == "masks" else shapes, labels,
                                                self.label_class.value or "object")
        except (AnnotationError, ValueError) as exc:
            self.report_error(exc)
            return
        self._stop.clear()
        self._latest = None
        progress = Progress(lambda ev: setattr(self, "_latest", ev), self._stop.is_set)
        out, val, seed = self.out.value, float(self.val.value), int(self.seed.value)
        note = f"from layers: image {image.name}" + (f", boxes {shapes.name}" if shapes is not None else "") + (
            f", masks {labels.name}" if labels is not None else "")

        @thread_worker(ignore_errors=True)
        def job():
            return export_dataset(items, out, fmt, classes, val_fraction=val, seed=seed, note=note,
                                  progress=progress)

        w = job()
        w.returned.connect(lambda res: self._done(res, notes))
        w.errored.connect(self.report_error)
        w.finished.connect(self._finished)
        self._thread = w
        self.set_busy(True, f"exporting to {out} ...")
        self._timer.start()
        w.start()

    def _show_progress(self):
        ev = self._latest
        if ev is not None and ev.fraction is not None:
            self.progress.value = int(round(100 * ev.fraction))

    def _done(self, res: dict, notes: list[str]):
        self.progress.value = 100
        per = ", ".join(f"{k} {v}" for k, v in res["counts"].items())
        splits = ", ".join(f"{k} {v}" for k, v in res["splits"].items())
        self.status.value = f"wrote {res['images']} images ({splits}), {res['boxes']} boxes ({per}) to {res['path']}"
        self.summary.value = " ".join(notes)

    def _finished(self):
        self._timer.stop()
        self._thread = None
        self.set_busy(False)

    def cancel(self, *_):
        self._stop.set()

    def report_error(self, exc: BaseException):
        if isinstance(exc, (AnnotationError, OSError)):
            from napari.utils.notifications import show_error

            self.progress.value = 0
            self.status.value = str(exc)
            show_error(str(exc))
            return
        super().report_error(exc)
