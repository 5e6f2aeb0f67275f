"""Settings of the trainers: one naming, validated, saved as JSON beside the weights.

Every trainer's settings derive from :class:`TrainSettings` (``batch_size``, ``patch_size``,
``learning_rate``, ``seed``, ``pmin``/``pmax``, ``augment``); those that count epochs from
:class:`EpochTrainSettings` (``epochs``, ``steps_per_epoch``). Where a trainer writes its
weights it also writes ``training.json``, whose ``"settings"`` is :meth:`TrainSettings.to_dict`;
:meth:`TrainSettings.from_training_json` reads them back (older files with the former names,
``lr``, ``batch``, ``patch``, ..., too: see ``aliases``).

Bad values are an :class:`~napari_cnnvision.core.axes.InputError` naming the field, raised when
the settings are made (and by :meth:`TrainSettings.validate` after a change), before any
training data is touched. numpy only.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..core.axes import InputError
from ..core.io import atomic_write_text
from .augment import AugmentSettings

TRAINING_JSON = "training.json"


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(float(v)))


@dataclass
class TrainSettings:
    """What every trainer has. Subclasses add their own fields and checks (``validate``) and say
    what patch sizes their network takes (``pooling``)."""

    batch_size: int = 8
    #: one side (a square patch) or (height, width)
    patch_size: int | tuple[int, int] = 128
    learning_rate: float = 1e-3
    seed: int = 0
    #: percentile normalization of every image, as at prediction time
    pmin: float = 1.0
    pmax: float = 99.8
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    #: how the settings are named in error messages
    label: ClassVar[str] = "training settings"
    #: former field names -> current ones (``a.b``: field ``b`` of the nested settings ``a``)
    aliases: ClassVar[dict[str, str]] = {}
    #: fields of this base that a trainer does not use (whole images, its own normalization):
    #: left out of :meth:`to_dict` (and so of ``training.json`` / the card)
    unused: ClassVar[tuple[str, ...]] = ()
    #: the type of ``augment`` (a trainer with its own augmentation names its settings class;
    #: it has a ``validate()`` raising :class:`InputError`)
    augment_type: ClassVar[type] = AugmentSettings

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # from JSON
                setattr(self, f.name, tuple(v))
            elif isinstance(v, dict) and f.default_factory is not MISSING:
                proto = f.default_factory()
                if is_dataclass(proto):
                    try:  # keys not given keep this class's defaults (its factory's)
                        setattr(self, f.name, type(proto)(**{**asdict(proto), **v}))
                    except InputError as e:
                        raise InputError(f"{self.label}: {e}") from None
                    except TypeError as e:  # an unknown key
                        raise InputError(f"{self.label}: {f.name}: {e}") from None
        self.validate()

    # ------------------------------------------------------------------ checks
    def pooling(self) -> tuple[int, int]:
        """Patch height and width must be multiples of these (the network's downsampling)."""
        return (1, 1)

    @property
    def patch_shape(self) -> tuple[int, int]:
        p = self.patch_size
        return (int(p), int(p)) if _is_int(p) else tuple(int(v) for v in p)

    def _fail(self, msg: str):
        raise InputError(f"{self.label}: {msg}")

    def _int(self, name: str, lo: int = 1):
        v = getattr(self, name)
        if not _is_int(v) or v < lo:
            self._fail(f"{name} must be a whole number >= {lo}, got {v!r}")

    def _positive(self, name: str, allow_zero: bool = False):
        v = getattr(self, name)
        if not _is_number(v) or v < 0 or (v == 0 and not allow_zero):
            self._fail(f"{name} must be a number {'>=' if allow_zero else '>'} 0, got {v!r}")

    def validate(self) -> None:
        """Raise :class:`InputError` for the first bad value."""
        self._int("batch_size")
        self._int("seed", 0)
        self._positive("learning_rate")
        if not (_is_number(self.pmin) and _is_number(self.pmax) and 0 <= self.pmin < self.pmax <= 100):
            self._fail(f"percentiles must satisfy 0 <= pmin < pmax <= 100, got pmin {self.pmin!r}, "
                       f"pmax {self.pmax!r}")
        p = self.patch_size
        if not (_is_int(p) or (isinstance(p, tuple) and len(p) == 2 and all(_is_int(v) for v in p))) \
                or min(self.patch_shape) < 1:
            self._fail(f"patch_size must be a positive whole number or (height, width), got {p!r}")
        if not isinstance(self.augment, self.augment_type):
            self._fail(f"augment must be augmentation settings, got {self.augment!r}")
        try:
            self.augment.validate()
        except InputError as e:
            self._fail(str(e))
        self.check_patch(self.patch_shape, self.pooling())

    def check_patch(self, patch: tuple[int, int], pooling: tuple[int, int]) -> None:
        """``patch`` must be a positive multiple of ``pooling`` (per axis)."""
        bad = [(p, m) for p, m in zip(patch, pooling) if p < m or p % m]
        if bad:
            p, m = bad[0]
            lo, hi = max(m, p // m * m), (p // m + 1) * m
            self._fail(f"patch_size {self.patch_size!r} does not fit the network: each side must be a "
                       f"multiple of {m} (it downsamples {m}x); {p} -> {lo} or {hi}")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        for name in self.unused:
            d.pop(name, None)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict | None):
        """Settings from a plain dict (a job's parameters, JSON); former names are accepted."""
        d = dict(d or {})
        for old, new in cls.aliases.items():
            if old not in d:
                continue
            v = d.pop(old)
            if "." in new:
                outer, inner = new.split(".", 1)
                sub = d.get(outer) or {}
                sub = asdict(sub) if is_dataclass(sub) else dict(sub)
                sub.setdefault(inner, v)
                d[outer] = sub
            else:
                d.setdefault(new, v)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{cls.label}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_training_json(cls, path: str | Path):
        """The settings saved in a model or run folder's ``training.json`` (or that file)."""
        path = Path(path)
        if path.is_dir():
            path = path / TRAINING_JSON
        data = json.loads(path.read_text())
        return cls.from_dict(data.get("settings", {}))

    @classmethod
    def from_model_card(cls, folder: str | Path):
        """The settings recorded in a model folder's card (``model.json``: ``training.settings``),
        as the detector and localizer trainers save them; former names are read too."""
        data = json.loads((Path(folder) / "model.json").read_text())
        return cls.from_dict((data.get("training") or {}).get("settings", {}))


@dataclass
class EpochTrainSettings(TrainSettings):
    """Settings of trainers that count epochs of ``steps_per_epoch`` batches."""

    epochs: int = 100
    steps_per_epoch: int = 100

    def validate(self) -> None:
        super().validate()
        self._int("epochs")
        self._int("steps_per_epoch")


def fit_patch(patch: tuple[int, int], min_hw: int, pooling: tuple[int, int]) -> tuple[int, int]:
    """``patch``, shrunk where the smallest image (side ``min_hw``) is smaller, to a multiple of
    16 and of the network's pooling."""
    out = []
    for p, m in zip(patch, pooling):
        step = math.lcm(16, int(m))
        q = min(p, (min_hw // step) * step)
        if q < 1:
            raise InputError(f"the smallest image ({min_hw} px) is smaller than the network's smallest patch "
                             f"({step} px)")
        out.append(q)
    return tuple(out)


def save_training_json(folder: str | Path, settings: TrainSettings, **extra) -> Path:
    """Write ``folder/training.json`` (atomically): ``{"settings": ..., **extra}``."""
    data = {"settings": settings.to_dict(), **extra}
    return atomic_write_text(Path(folder) / TRAINING_JSON, json.dumps(data, indent=1) + "\n")
