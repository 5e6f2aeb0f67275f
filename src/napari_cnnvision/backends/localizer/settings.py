"""Settings of the localizer trainer (:func:`.train.train_localizer`): the shared names of
:mod:`..settings`, validated (an :class:`~napari_cnnvision.core.axes.InputError` naming the
field), saved in the model card's ``training.settings``; the former names (``lr``,
``time_budget_s``, a true / false ``augment`` and the flat ``turns``, ``zoom``, ``shift``,
``intensity``) are read too, as in the shipped ``wbc-localizer`` card. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...core.axes import InputError
from ..settings import TrainSettings, _is_int, _is_number


@dataclass
class LocalizerAugment:
    """The localizer's own batched torch augmentation (:func:`augment_batch`), not the shared
    :mod:`..augment`: it stays because the shipped ``wbc-localizer`` was trained with it (its
    random draws and its box-keeping rule for zoom / shift)."""

    #: augment at all (off: the images as prepared)
    on: bool = True
    #: 90° turns besides the flips (only where the input's pixels keep their aspect ratio)
    turns: bool = True
    #: random zoom factor in 1 ± zoom
    zoom: float = 0.2
    #: random shift, fraction of the half image size
    shift: float = 0.15
    #: gain and offset jitter
    intensity: float = 0.15

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name in ("on", "turns"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"augment.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("zoom", "shift", "intensity"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v < 1:
                raise InputError(f"augment.{name} must be a number in 0..1 (exclusive of 1), got {v!r}")


@dataclass
class LocalizerTrainSettings(TrainSettings):
    """Settings of :func:`train_localizer` (the shared names of :mod:`..settings`). The images are
    resized whole to ``input_size`` and normalized as the card says, so ``patch_size``, ``pmin``
    and ``pmax`` are not used (nor saved). ``time_budget`` (seconds) stops the run and ends the
    cosine schedule there."""

    epochs: int = 100
    time_budget: float | None = None
    batch_size: int = 16
    learning_rate: float = 2e-3
    augment: LocalizerAugment = field(default_factory=LocalizerAugment)
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    box_weight: float = 20.0  # λ in CE + λ·MSE
    label_smoothing: float = 0.05
    balance: float = 0.5  # class-balanced sampling exponent (0: plain, 1: every class equally often)
    class_weight_power: float = 0.5  # CE class weights count ** -power (with balance 0.5: ~1/count overall)
    min_class_count: int = 5  # counts below this are raised to it for the weights (1-image classes)
    input_size: tuple[int, int] = (256, 256)
    widths: tuple[int, ...] = (24, 32, 64, 96, 128, 192)
    convs_per_stage: int = 2
    dropout: float = 0.2
    ema: float = 0.99  # exponential moving average of the weights used for validation (0: off)
    seed: int = 0

    label = "localizer training settings"
    aliases = {"lr": "learning_rate", "time_budget_s": "time_budget", "turns": "augment.turns",
               "zoom": "augment.zoom", "shift": "augment.shift", "intensity": "augment.intensity"}
    unused = ("patch_size", "pmin", "pmax")
    augment_type = LocalizerAugment

    @classmethod
    def from_dict(cls, d: dict | None):
        """Also the former ``augment`` true / false (now ``augment.on``)."""
        d = dict(d or {})
        if isinstance(d.get("augment"), (bool, np.bool_)):
            d["augment"] = {"on": bool(d["augment"])}
        return super().from_dict(d)

    def validate(self) -> None:
        super().validate()
        self._int("epochs")
        self._int("min_class_count")
        self._int("convs_per_stage")
        for name in ("input_size", "widths"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or not all(_is_int(x) and x >= 1 for x in v) \
                    or (name == "input_size" and len(v) != 2):
                what = "(height, width)" if name == "input_size" else "one or more"
                self._fail(f"{name} must be {what} whole numbers >= 1, got {v!r}")
        for name in ("weight_decay", "warmup_epochs", "box_weight", "balance", "class_weight_power"):
            self._positive(name, allow_zero=True)
        for name in ("label_smoothing", "dropout", "ema"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v < 1:
                self._fail(f"{name} must be a number in 0..1 (exclusive of 1), got {v!r}")
        if self.time_budget is not None:
            self._positive("time_budget")
