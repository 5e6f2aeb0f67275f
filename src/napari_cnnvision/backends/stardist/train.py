"""Train (or fine-tune) a StarDist 2D model; the result is a folder that ``stardist`` loads.

TensorFlow and StarDist are imported inside :func:`train_stardist2d`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.normalize import percentile_normalize
from ...core.progress import NULL_PROGRESS, Progress
from ..augment import AugmentSettings, GlobalRandom, augment, zoom_patch  # noqa: F401  (zoom_patch: API)
from ..settings import EpochTrainSettings, fit_patch, save_training_json


@dataclass
class StarDistTrainSettings(EpochTrainSettings):
    """Settings of :func:`train_stardist2d` (the network's fields as ``stardist``'s ``Config2D``)."""

    n_rays: int = 32
    grid: tuple[int, int] = (2, 2)
    patch_size: tuple[int, int] = (256, 256)
    batch_size: int = 4
    epochs: int = 100
    steps_per_epoch: int = 100
    learning_rate: float = 3e-4
    unet_n_depth: int = 3
    unet_n_filter_base: int = 32
    #: split training images larger than two patches into patch-sized tiles, so that every
    #: region is drawn about equally often (StarDist draws one patch per randomly chosen image,
    #: which under-samples the few large images, e.g. whole embryos, against many 256² crops)
    area_sampling: bool = False
    #: halve the learning rate after this many epochs without a lower val loss
    reduce_lr_patience: int = 40
    #: also keep the weights of every N-th epoch as ``weights_e<epoch>.h5`` (0: off), so that
    #: later epochs can be compared on val AP, not only on val loss (``weights_best.h5``)
    save_every: int = 0
    # augment.zoom (formerly ``scale_augment``): a random zoom of each training patch,
    # independently per axis, by a factor in ``[1 / (1 + zoom), 1 + zoom]`` (0: off, the original
    # recipe); teaches nuclei of other sizes and aspect ratios than the training images hold

    label = "StarDist training settings"
    aliases = {"scale_augment": "augment.zoom"}

    def pooling(self) -> tuple[int, int]:
        return tuple(int(g) * 2 ** int(self.unet_n_depth) for g in self.grid)

    def validate(self) -> None:
        self._int("n_rays", 3)
        g = self.grid
        if not (isinstance(g, tuple) and len(g) == 2 and all(isinstance(v, int) and v >= 1 and v & (v - 1) == 0
                                                             for v in g)):
            self._fail(f"grid must be two powers of two, e.g. (2, 2), got {g!r}")
        self._int("unet_n_depth")
        self._int("unet_n_filter_base")
        self._int("reduce_lr_patience")
        self._int("save_every", 0)
        if not isinstance(self.area_sampling, bool):
            self._fail(f"area_sampling must be true or false, got {self.area_sampling!r}")
        super().validate()


@dataclass
class StarDistTrainResult:
    model_dir: str
    epochs_run: int
    seconds: float
    history: dict
    thresholds: dict | None


def _prepare_images(images, pmin, pmax):
    out = []
    for im in images:  # channels are normalized jointly, as at prediction time
        out.append(percentile_normalize(im, pmin, pmax))
    return out


def area_tiles(images, masks, patch):
    """Split each image (and its mask) into ``floor(H/ph) x floor(W/pw)`` tiles, each at least a patch.

    An image smaller than two patches in both axes stays whole, so a draw of "one random
    image, then one random patch" samples the data about in proportion to its area.
    """
    ph, pw = patch
    out_x, out_y = [], []
    for x, y in zip(images, masks):
        h, w = y.shape[:2]
        ny, nx = max(1, h // ph), max(1, w // pw)
        ys = np.linspace(0, h, ny + 1).astype(int)
        xs = np.linspace(0, w, nx + 1).astype(int)
        for i in range(ny):
            for j in range(nx):
                out_x.append(x[ys[i]:ys[i + 1], xs[j]:xs[j + 1]])
                out_y.append(y[ys[i]:ys[i + 1], xs[j]:xs[j + 1]])
    return out_x, out_y


def _augment(x, y, scale: float = 0.0, settings: AugmentSettings | None = None):
    """stardist's ``augmenter(x, y)``: :func:`~napari_cnnvision.backends.augment.augment` drawing
    from ``np.random`` (which the trainer seeds); ``scale`` is the zoom when no ``settings``."""
    out = augment(GlobalRandom, x, y, settings=settings or AugmentSettings(zoom=scale))
    return out.image, out.labels


def train_stardist2d(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    val_images: list[np.ndarray],
    val_masks: list[np.ndarray],
    out_dir: str | Path,
    name: str,
    settings: StarDistTrainSettings | None = None,
    init_weights: str | Path | None = None,
    optimize_thresholds: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> StarDistTrainResult:
    """Train a StarDist2D model into ``out_dir/name`` (config.json, weights, thresholds.json,
    training.json: the settings, then also the loss history and the training time).

    ``progress`` receives one event per epoch with the losses; a stop request ends
    training after the current epoch and keeps the best weights so far.
    """
    s = settings or StarDistTrainSettings()
    s.validate()
    if not images:
        raise InputError("no training images")
    if not val_images:
        raise InputError("no validation images (they choose the best weights and the thresholds)")
    if len(images) != len(masks) or len(val_images) != len(val_masks):
        raise InputError("every image needs exactly one mask")

    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D
    import tensorflow as tf

    np.random.seed(s.seed)
    tf.random.set_seed(s.seed)
    n_channel = 1 if images[0].ndim == 2 else images[0].shape[-1]
    X = _prepare_images(images, s.pmin, s.pmax)
    Y = [fill_label_holes(m.astype(np.int32)) for m in masks]
    Xv = _prepare_images(val_images, s.pmin, s.pmax)
    Yv = [fill_label_holes(m.astype(np.int32)) for m in val_masks]
    min_hw = min(min(x.shape[:2]) for x in X + Xv)
    patch = fit_patch(s.patch_shape, min_hw, s.pooling())
    if s.area_sampling:
        X, Y = area_tiles(X, Y, patch)

    conf = Config2D(
        n_rays=s.n_rays, grid=tuple(s.grid), n_channel_in=n_channel,
        train_patch_size=patch, train_batch_size=s.batch_size,
        train_learning_rate=s.learning_rate, unet_n_depth=s.unet_n_depth,
        unet_n_filter_base=s.unet_n_filter_base, train_tensorboard=False, use_gpu=False,
        train_epochs=s.epochs, train_steps_per_epoch=s.steps_per_epoch,
        train_reduce_lr={"factor": 0.5, "patience": s.reduce_lr_patience, "min_delta": 0},
    )
    model = StarDist2D(conf, name=name, basedir=str(out_dir))
    model_dir = Path(out_dir) / name
    init = str(init_weights) if init_weights is not None else None
    save_training_json(model_dir, s, init_weights=init)  # beside config.json, before any weights
    if init_weights is not None:
        model.keras_model.load_weights(str(init_weights))
    model.prepare_for_training()

    total = s.epochs
    t0 = time.time()

    class _Report(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            progress((epoch + 1) / total, f"epoch {epoch + 1}/{total}", epoch=epoch + 1,
                     seconds=time.time() - t0, **logs)
            if s.save_every and (epoch + 1) % s.save_every == 0:
                model.keras_model.save_weights(str(model_dir / f"weights_e{epoch + 1:03d}.h5"))
            if progress.stop_requested:
                self.model.stop_training = True

    model.callbacks.append(_Report())
    hist = model.train(X, Y, validation_data=(Xv, Yv), augmenter=partial(_augment, settings=s.augment),
                       epochs=s.epochs, steps_per_epoch=s.steps_per_epoch)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    seconds = time.time() - t0
    thresholds = None
    # StarDist keeps the best (val loss) weights in weights_best.h5; use them from here on.
    best = model_dir / "weights_best.h5"
    if best.exists():
        model.load_weights("weights_best.h5")
    if optimize_thresholds:
        progress(None, "optimizing thresholds on the validation images")
        thresholds = model.optimize_thresholds(Xv, Yv)
    save_training_json(model_dir, s, init_weights=init, history=history, seconds=seconds)  # atomic
    return StarDistTrainResult(str(model_dir), len(history.get("loss", [])), seconds, history, thresholds)


def train_job(progress, images, masks, val_images, val_masks, out_dir=None, name: str = "stardist",
              settings: dict | None = None, init_weights=None, optimize_thresholds: bool = True, basedir=None):
    """Worker entry: settings as a plain dict of :class:`StarDistTrainSettings` fields
    (``basedir``: the former name of ``out_dir``)."""
    s = StarDistTrainSettings.from_dict(settings)
    out = out_dir if out_dir is not None else basedir
    if out is None:
        raise InputError("stardist.train needs out_dir, the folder to write the model folder into")
    return train_stardist2d(list(images), list(masks), list(val_images), list(val_masks), out, name, s,
                            init_weights=init_weights, optimize_thresholds=optimize_thresholds, progress=progress)
