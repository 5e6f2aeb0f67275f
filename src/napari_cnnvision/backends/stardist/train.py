"""Train (or fine-tune) a StarDist 2D model; the result is a folder that ``stardist`` loads.

TensorFlow and StarDist are imported inside :func:`train_stardist2d`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ...core.normalize import percentile_normalize
from ...core.progress import NULL_PROGRESS, Progress


@dataclass
class StarDistTrainSettings:
    n_rays: int = 32
    grid: tuple[int, int] = (2, 2)
    patch_size: tuple[int, int] = (256, 256)
    batch_size: int = 4
    epochs: int = 100
    steps_per_epoch: int = 100
    learning_rate: float = 3e-4
    unet_n_depth: int = 3
    unet_n_filter_base: int = 32
    pmin: float = 1.0
    pmax: float = 99.8
    seed: int = 0
    #: split training images larger than two patches into patch-sized tiles, so that every
    #: region is drawn about equally often (StarDist draws one patch per randomly chosen image,
    #: which under-samples the few large images, e.g. whole embryos, against many 256² crops)
    area_sampling: bool = False
    #: halve the learning rate after this many epochs without a lower val loss
    reduce_lr_patience: int = 40
    #: random zoom of each training patch, independently per axis, by a factor in
    #: ``[1 / (1 + scale_augment), 1 + scale_augment]`` (0: off, the original recipe); teaches
    #: nuclei of other sizes and aspect ratios than the training images hold
    scale_augment: float = 0.0
    #: also keep the weights of every N-th epoch as ``weights_e<epoch>.h5`` (0: off), so that
    #: later epochs can be compared on val AP, not only on val loss (``weights_best.h5``)
    save_every: int = 0


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


def _fit_to(a, shape, fill):
    """Centre-crop or pad (with ``fill``) the first two axes of ``a`` to ``shape``."""
    for ax, n in enumerate(shape):
        d = a.shape[ax] - n
        if d > 0:
            a = np.take(a, np.arange(d // 2, d // 2 + n), axis=ax)
        elif d < 0:
            pad = [(0, 0)] * a.ndim
            pad[ax] = (-d // 2, -d - (-d // 2))
            a = np.pad(a, pad, constant_values=fill)
    return a


def zoom_patch(x, y, factors):
    """Zoom an image patch (linear) and its label patch (nearest) by ``factors`` (per spatial
    axis), keeping the patch shape: zoom-in crops the centre, zoom-out pads with background."""
    from scipy.ndimage import zoom

    shape = y.shape[:2]
    f = tuple(factors) + (1,) * (x.ndim - 2)
    zx = zoom(x, f, order=1, mode="nearest", grid_mode=True)
    zy = zoom(y, tuple(factors), order=0, mode="nearest", grid_mode=True)
    return _fit_to(zx, shape, float(np.min(x))), _fit_to(zy, shape, 0)


def _augment(x, y, scale=0.0):
    """Random flips / 90° rotations and an intensity jitter (image and mask alike); with
    ``scale`` > 0 also a random per-axis zoom (see :attr:`StarDistTrainSettings.scale_augment`)."""
    if scale > 0:
        lo, hi = -np.log1p(scale), np.log1p(scale)
        x, y = zoom_patch(x, y, np.exp(np.random.uniform(lo, hi, size=2)))
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    x = x * np.random.uniform(0.6, 1.4) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train_stardist2d(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    val_images: list[np.ndarray],
    val_masks: list[np.ndarray],
    basedir: str | Path,
    name: str,
    settings: StarDistTrainSettings | None = None,
    init_weights: str | Path | None = None,
    optimize_thresholds: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> StarDistTrainResult:
    """Train a StarDist2D model into ``basedir/name`` (config.json, weights, thresholds.json).

    ``progress`` receives one event per epoch with the losses; a stop request ends
    training after the current epoch and keeps the best weights so far.
    """
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D
    import tensorflow as tf

    s = settings or StarDistTrainSettings()
    np.random.seed(s.seed)
    tf.random.set_seed(s.seed)
    if not images:
        raise ValueError("no training images")
    n_channel = 1 if images[0].ndim == 2 else images[0].shape[-1]
    X = _prepare_images(images, s.pmin, s.pmax)
    Y = [fill_label_holes(m.astype(np.int32)) for m in masks]
    Xv = _prepare_images(val_images, s.pmin, s.pmax)
    Yv = [fill_label_holes(m.astype(np.int32)) for m in val_masks]
    min_hw = min(min(x.shape[:2]) for x in X + Xv)
    patch = tuple(min(p, (min_hw // 16) * 16) for p in s.patch_size)
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
    model = StarDist2D(conf, name=name, basedir=str(basedir))
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
                model.keras_model.save_weights(str(Path(basedir) / name / f"weights_e{epoch + 1:03d}.h5"))
            if progress.stop_requested:
                self.model.stop_training = True

    model.callbacks.append(_Report())
    hist = model.train(X, Y, validation_data=(Xv, Yv), augmenter=partial(_augment, scale=s.scale_augment),
                       epochs=s.epochs, steps_per_epoch=s.steps_per_epoch)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    seconds = time.time() - t0
    thresholds = None
    model_dir = Path(basedir) / name
    # StarDist keeps the best (val loss) weights in weights_best.h5; use them from here on.
    best = model_dir / "weights_best.h5"
    if best.exists():
        model.load_weights("weights_best.h5")
    if optimize_thresholds:
        progress(None, "optimizing thresholds on the validation images")
        thresholds = model.optimize_thresholds(Xv, Yv)
    (model_dir / "training.json").write_text(json.dumps(
        {"settings": asdict(s), "history": history, "seconds": seconds}, indent=1))
    return StarDistTrainResult(str(model_dir), len(history.get("loss", [])), seconds, history, thresholds)


def train_job(progress, images, masks, val_images, val_masks, basedir, name, settings: dict | None = None,
              init_weights=None, optimize_thresholds: bool = True):
    """Worker entry: settings as a plain dict of :class:`StarDistTrainSettings` fields."""
    s = StarDistTrainSettings(**(settings or {}))
    return train_stardist2d(list(images), list(masks), list(val_images), list(val_masks), basedir, name, s,
                            init_weights=init_weights, optimize_thresholds=optimize_thresholds, progress=progress)
