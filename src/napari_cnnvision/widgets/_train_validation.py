"""The Train widget's validation choice: an automatic split of the training data (a fraction), or
an image + annotation layer pair of its own, picked like the training pair. The pair is read by
:mod:`._train_layers`; :func:`~..backends.training.plan.plan` takes it as ``val_pairs`` (every
training pair then trains) and its summary says where the validation data came from, and its size."""
from __future__ import annotations

from magicgui.widgets import ComboBox, FloatSpinBox, create_widget

from ..core.axes import InputError

AUTO, LAYERS = "automatic split (fraction)", "chosen layers"


class ValidationChoice:
    """The controls (``widgets()``, in order) and the validation pairs they choose.

    ``target_choices``: the annotation layers offered (the training pair's list)."""

    def __init__(self, target_choices):
        self.mode = ComboBox(label="validation", choices=[AUTO, LAYERS], value=AUTO,
                             tooltip="hold out part of the training data automatically, or validate on an "
                                     "image + annotation pair of its own (the training pairs then all train)")
        self.fraction = FloatSpinBox(label="validation part", min=0.05, max=0.5, step=0.05, value=0.2)
        self.image = create_widget(annotation="napari.layers.Image", label="validation image")
        self.target = ComboBox(label="validation annotation", choices=target_choices,
                               tooltip="the validation image's annotation: Labels (segment) or Shapes "
                                       "rectangles with a 'class' feature (detect, localize)")
        self.mode.changed.connect(self.update)
        self.update()

    def widgets(self) -> list:
        return [self.mode, self.fraction, self.image, self.target]

    @property
    def chosen(self) -> bool:
        """True: validation layers of its own (not the automatic split)."""
        return self.mode.value == LAYERS

    def update(self, *_):
        self.fraction.visible = not self.chosen
        self.image.visible = self.target.visible = self.chosen

    def reset_choices(self):
        self.target.reset_choices()

    def pairs(self, read, training: list) -> list | None:
        """``None`` (the automatic split) or the chosen layers as one pair, read by ``read``
        (:func:`._train_layers.labels_pair` / ``boxes_pair``); ``training``: the training
        ``(image, annotation)`` layers, which cannot validate too."""
        if not self.chosen:
            return None
        image, target = self.image.value, self.target.value
        if image is None or target is None:
            raise InputError("choose the validation image and its annotation layer (or an automatic split)")
        if any(target is ann for _, ann in training):
            raise InputError(f"the validation annotation {target.name!r} is a training annotation too; choose "
                             "another layer (or an automatic split)")
        try:
            return [read(image, target)]
        except InputError as e:
            raise InputError(f"validation data: {e}") from None
