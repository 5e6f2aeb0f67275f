"""The Segment dock widget: image layer + model + thresholds -> Labels layer."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit,
                              ProgressBar, PushButton, create_widget)

from ..core.axes import InputError
from ..core.registry import ModelNotFound, ModelRegistry, read_card
from ..layers.segmentation import RESULT_KEY, segmentation_layers
from ._compute import JobRunner, describe_error, pool_for

BROWSE = "(model folder below)"


class SegmentWidget(Container):
    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.registry = registry or ModelRegistry()
        self.runner = JobRunner(pool_for(napari_viewer), owner=self.native)

        self.image = create_widget(annotation="napari.layers.Image", label="image")
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.model_dir = FileEdit(label="model folder", mode="d", visible=False)
        self.optimized = CheckBox(text="use the model's optimized thresholds", value=True)
        self.prob = FloatSpinBox(label="probability", min=0.0, max=1.0, step=0.05, value=0.5, enabled=False)
        self.nms = FloatSpinBox(label="overlap (NMS)", min=0.0, max=1.0, step=0.05, value=0.4, enabled=False)
        self.pmin = FloatSpinBox(label="normalize low %", min=0.0, max=100.0, step=0.5, value=1.0)
        self.pmax = FloatSpinBox(label="normalize high %", min=0.0, max=100.0, step=0.1, value=99.8)
        self.tiles = LineEdit(label="tiles", value="auto", tooltip="'auto', 'none' or counts per axis: 2,2")
        self.scope = ComboBox(label="frames", choices=["whole stack", "current frame"], value="whole stack")
        self.outlines = CheckBox(text="also add outlines (Shapes)", value=False)
        self.tta = CheckBox(text="test-time augmentation (8x slower, a little more accurate)", value=False,
                            tooltip="average the network's output over the image's 8 flips and 90° turns")
        self.run_btn = PushButton(text="Segment")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="", value="")
        self.extend([self.image, self.model, self.model_dir, self.optimized, self.prob, self.nms, self.pmin,
                     self.pmax, self.tiles, self.scope, self.outlines, self.tta, self.run_btn, self.cancel_btn,
                     self.progress, self.status])

        self.model.changed.connect(self._on_model)
        self.optimized.changed.connect(self._on_optimized)
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.runner.cancel)
        self.prob.changed.connect(self._on_threshold)
        self.nms.changed.connect(self._on_threshold)
        self._last_result_of = None  # (image layer, model) of the last result: threshold edits re-run it
        from qtpy.QtCore import QTimer

        self._debounce = QTimer(self.native)  # coalesces quick threshold edits into one re-run
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self.run)
        self._on_model()

    # -- model choice ---------------------------------------------------------------
    def _model_choices(self, *_):
        cards = self.registry.list("segment")
        return [(f"{c.name}  ({c.source})", c.name) for c in cards] + [("browse to a model folder...", BROWSE)]

    def current_card(self):
        if self.model.value == BROWSE:
            path = self.model_dir.value
            if not path or str(path) in ("", "."):
                raise InputError("choose a model folder")
            return read_card(path, "path")
        return self.registry.get(self.model.value)

    def _on_model(self, *_):
        self.model_dir.visible = self.model.value == BROWSE
        try:
            backend = self.current_card().backend
        except (InputError, ModelNotFound, ValueError):
            backend = ""
        uses_nms = backend != "unet"
        self.tta.enabled = backend != "stardist3d"  # flips/turns of 3D rays are not exact
        if not self.tta.enabled:
            self.tta.value = False
        self.nms.visible = uses_nms  # the U-Net's watershed has no overlap threshold
        self.prob.label = "probability" if uses_nms else "seed probability"
        self._on_optimized()

    def _on_optimized(self, *_):
        manual = not self.optimized.value
        self.prob.enabled = self.nms.enabled = manual
        if not manual:
            try:
                from ..backends.dispatch import thresholds_for

                thr = thresholds_for(self.current_card())
            except (InputError, ModelNotFound, ValueError):
                thr = {}
            self.prob.value = float(thr.get("prob") or 0.5)
            self.nms.value = float(thr.get("nms") or 0.4)

    def _on_threshold(self, *_):
        """Re-run after a threshold edit when a result of this image and model is shown.

        The worker caches the network's output, so only non-maximum suppression runs again."""
        if self.optimized.value or self.runner.running or self._last_result_of is None:
            return
        layer = self.image.value
        if layer is None or self._last_result_of != (layer.name, self.model.value):
            return
        if self._own_result(layer.name, self._last_model_name) is None:
            return
        self._debounce.start()

    # -- running ----------------------------------------------------------------------
    def _request(self):
        from ..backends.dispatch import card_payload, job_for
        from ..cli.segment import parse_tiles
        from ..core.axes import guess_axes

        layer = self.image.value
        if layer is None:
            raise InputError("select an Image layer to segment")
        card = self.current_card()
        data = layer.data[0] if layer.multiscale else layer.data
        data = np.asarray(data)
        n_dim = 3 if card.backend.endswith("3d") else 2
        axes = guess_axes(data.shape, n_dim, rgb=layer.rgb)
        frame = None
        if axes.startswith("T") and self.scope.value == "current frame":
            frame = int(self.viewer.dims.current_step[0])
            data, axes = data[frame], axes[1:]
        kwargs = dict(image=data, model=card_payload(card), axes=axes, pmin=self.pmin.value, pmax=self.pmax.value,
                      n_tiles=parse_tiles(self.tiles.value), return_polygons=self.outlines.value,
                      tta=bool(self.tta.value))
        if not self.optimized.value:
            kwargs.update(prob_thresh=self.prob.value, nms_thresh=self.nms.value)
        return job_for(card, task="segment"), kwargs, layer, frame

    def run(self, *_):
        self._debounce.stop()
        if self.runner.running:
            return
        try:
            job, kwargs, layer, frame = self._request()
        except (InputError, ModelNotFound, ValueError) as exc:
            self._report_error(exc)
            return
        self._set_busy(True, f"segmenting {layer.name} ...")
        self.runner.start(job, kwargs, on_progress=self._on_progress,
                          on_done=lambda res: self._on_done(res, layer, frame),
                          on_error=self._report_error, on_finished=lambda: self._set_busy(False))

    def _set_busy(self, busy: bool, message: str | None = None):
        self.run_btn.enabled = not busy
        self.cancel_btn.enabled = busy
        if busy:
            self.progress.value = 0
        if message is not None:
            self.status.value = message

    def _on_progress(self, ev):
        if ev.fraction is not None:
            self.progress.value = int(round(100 * ev.fraction))
        if ev.message:
            self.status.value = ev.message

    def _report_error(self, exc):
        from napari.utils.notifications import show_error, show_info

        msg = describe_error(exc)
        self.status.value = msg
        (show_info if msg == "Cancelled." else show_error)(msg)

    def _on_done(self, result, layer, frame):
        from napari.utils.notifications import show_warning

        self.progress.value = 100
        for w in result.warnings:
            show_warning(w)
        out = segmentation_layers(result, layer.name, scale=layer.scale, translate=layer.translate)
        labels_data, kw, _ = out[0]
        existing = self._own_result(layer.name, result.model)
        if frame is not None:
            labels_data, kw["features"] = _merge_frame(existing, labels_data, kw["features"], frame,
                                                       layer.data.shape[0])
            kw["scale"], kw["translate"] = tuple(layer.scale)[:labels_data.ndim], tuple(layer.translate)[:labels_data.ndim]
        if existing is not None:
            existing.data = labels_data
            existing.features = kw["features"]
            existing.metadata = kw["metadata"]
            target = existing
        else:
            target = self.viewer.add_labels(labels_data, **kw)
        for data, skw, kind in out[1:]:
            old = [lyr for lyr in self.viewer.layers if lyr.name == skw["name"] and RESULT_KEY in lyr.metadata]
            for lyr in old:
                self.viewer.layers.remove(lyr)
            self.viewer.add_shapes(data, **skw)
        self._last_result_of = (layer.name, self.model.value)
        self._last_model_name = result.model
        n = result.n_objects
        self.status.value = f"{n} objects in {target.name} ({result.timings.get('total_s', 0):.1f} s)"

    def _own_result(self, image_name, model):
        for lyr in self.viewer.layers:
            meta = lyr.metadata.get(RESULT_KEY) if hasattr(lyr, "metadata") else None
            if (meta and meta.get("kind") == "segmentation" and meta.get("source") == image_name
                    and meta.get("model") == model):
                return lyr
        return None


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
