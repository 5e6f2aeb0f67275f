"""Train (or fine-tune) a StarDist 2D model; the result is a folder that ``stardist`` loads.

Fine-tuning (``init_folder``: a base model) keeps the base model's architecture and weights; a
base model for other channels than the data's (a 1-channel fluorescence model, RGB images) gets
its first convolution adapted (:mod:`..channels`), recorded in the card. The folder gets a card
(``model.json``: base model, data, settings, curves, val metrics, time, hardware) and thresholds
re-optimized on the validation images for the plugin's own post-processing.

TensorFlow and StarDist are imported inside :func:`train_stardist2d`.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.io import atomic_write_text, staged_dir
from ...core.normalize import percentile_normalize
from ...core.progress import NULL_PROGRESS, Progress
from ..augment import AugmentSettings, GlobalRandom, augment, zoom_patch  # noqa: F401  (zoom_patch: API)
from ..settings import EpochTrainSettings, _is_number, fit_patch, save_training_json
from ..training.epochs import epoch_message


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
    #: stop after this many seconds of training (``time_budget_min``: minutes); None: by epochs
    time_budget: float | None = None
    #: score the validation images (AP@0.5 at the base / default thresholds) after every N-th
    #: epoch (0: off); the best of these weights is a candidate for the final model
    val_ap_every: int = 1
    # augment.zoom (formerly ``scale_augment``): a random zoom of each training patch,
    # independently per axis, by a factor in ``[1 / (1 + zoom), 1 + zoom]`` (0: off, the original
    # recipe); teaches nuclei of other sizes and aspect ratios than the training images hold

    label = "StarDist training settings"
    aliases = {"scale_augment": "augment.zoom", "lr": "learning_rate"}

    @classmethod
    def from_dict(cls, d: dict | None):
        """Also ``time_budget_min`` (minutes; ``time_budget`` is in seconds)."""
        d = dict(d or {})
        if "time_budget_min" in d:
            m = d.pop("time_budget_min")
            if d.get("time_budget") is None:
                d["time_budget"] = m * 60 if _is_number(m) else m
        return super().from_dict(d)

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
        self._int("val_ap_every", 0)
        if self.time_budget is not None:
            self._positive("time_budget")
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
    metrics: dict = field(default_factory=dict)
    stopped: bool = False
    weights: str = "weights_best.h5"
    channel_adaptation: dict | None = None
    settings: dict = field(default_factory=dict)

    @property
    def kept_base(self) -> bool:
        """The fine-tune did not beat its base on the validation part: the base's weights were kept."""
        return self.weights == "weights_start.h5"


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


def _n_channels(images) -> int:
    chans = {1 if im.ndim == 2 else (im.shape[-1] if im.ndim == 3 else -1) for im in images}
    if -1 in chans or len(chans) != 1:
        raise InputError("all images must be 2D (YX) or all YXC with the same number of channels; "
                         f"got shapes {sorted({im.shape for im in images})[:5]}")
    return chans.pop()


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
    *,
    init_folder=None,
    data: str | None = None,
    command: str | None = None,
    atomic: bool = False,
    card: bool = True,
    threshold_images: int | None = None,
    resume: bool = False,
) -> StarDistTrainResult:
    """Train a StarDist2D model into ``out_dir/name`` (config.json, weights, thresholds.json,
    training.json: the settings, then also the loss history and the training time; model.json
    when ``card``).

    ``init_folder`` (a StarDist model folder or a card payload) fine-tunes that model: its
    architecture wins over the settings', its first convolution is adapted when its channels
    differ from the images'. ``init_weights`` (a weights file of the same architecture) is the
    older way to start from weights. ``atomic``: train in a temporary sibling folder that replaces
    ``out_dir/name`` only when everything is written. The final weights are those of
    :data:`.finetune.CANDIDATES` with the highest val AP@0.5 (thresholds re-optimized on the validation
    images for the plugin's post-processing when ``optimize_thresholds``; on at most
    ``threshold_images`` of them when given, for a large validation set).

    ``progress`` receives one event per epoch with the losses (and ``val_ap50``); a stop request
    or the time budget ends training after the current batch and keeps the best weights so far.

    A checkpoint is written after every epoch into ``out_dir/.training/name`` (:mod:`.resume`)
    and removed once the model is saved; ``resume`` continues the interrupted run of that name
    after its last epoch (InputError when there is none, when its checkpoint cannot be read, or
    when the base model, architecture, settings or data differ). The time budget counts the
    whole run.
    """
    s = settings or StarDistTrainSettings()
    s.validate()
    if not images:
        raise InputError("no training images")
    if not val_images:
        raise InputError("no validation images (they choose the best weights and the thresholds)")
    if len(images) != len(masks) or len(val_images) != len(val_masks):
        raise InputError("every image needs exactly one mask")
    for im, mk in zip(list(images) + list(val_images), list(masks) + list(val_masks)):
        if np.shape(im)[:2] != np.shape(mk) or np.ndim(mk) != 2:
            raise InputError(f"image shape {np.shape(im)} does not match its mask shape {np.shape(mk)}")
    n_channel = _n_channels(list(images) + list(val_images))
    if init_folder is not None and init_weights is not None:
        raise InputError("give init_folder (a base model) or init_weights (a weights file), not both")

    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D
    import tensorflow as tf

    from ..checkpoint import fingerprint, run_dir
    from ..keras_checkpoint import KerasRunCheckpoints
    from .finetune import (START_WEIGHTS, ap50, build_card, choose_weights, data_summary, load_base,
                           transfer_weights)
    from .resume import (KEPT, ContinueRandom, epoch_state, remove_stale_stages, restore, restore_plateau,
                         run_request)

    t_start = time.time()
    np.random.seed(s.seed)
    tf.random.set_seed(s.seed)
    base = None
    if init_folder is not None:
        progress(0.0, "loading the base model")
        base = load_base(init_folder)
    arch = dict(base.arch) if base is not None else {
        "n_rays": s.n_rays, "grid": tuple(s.grid), "unet_n_depth": s.unet_n_depth,
        "unet_n_filter_base": s.unet_n_filter_base}
    ckpts = KerasRunCheckpoints(run_dir(out_dir, name), name, run_request(
        arch, n_channel, s, base, init_weights, fingerprint(images, masks, val_images, val_masks)), progress,
        keep=KEPT)
    saved = ckpts.begin(resume)  # a refused resumption fails here, before anything is built
    pooling = tuple(int(g) * 2 ** int(arch["unet_n_depth"]) for g in arch["grid"])
    X = _prepare_images(images, s.pmin, s.pmax)
    Y = [fill_label_holes(np.asarray(m).astype(np.int32)) for m in masks]
    Xv = _prepare_images(val_images, s.pmin, s.pmax)
    Yv = [fill_label_holes(np.asarray(m).astype(np.int32)) for m in val_masks]
    min_hw = min(min(x.shape[:2]) for x in X + Xv)
    patch = fit_patch(s.patch_shape, min_hw, pooling)
    s.check_patch(patch, pooling)
    if s.area_sampling:
        X, Y = area_tiles(X, Y, patch)

    conf = Config2D(
        axes="YX" if n_channel == 1 else "YXC", n_channel_in=n_channel, **arch,
        train_patch_size=patch, train_batch_size=s.batch_size,
        train_learning_rate=s.learning_rate, train_tensorboard=False, use_gpu=False,
        train_epochs=s.epochs, train_steps_per_epoch=s.steps_per_epoch,
        train_reduce_lr={"factor": 0.5, "patience": s.reduce_lr_patience, "min_delta": 0},
    )
    dest = Path(out_dir) / name
    stage = staged_dir(dest) if atomic else contextlib.nullcontext(dest)
    with stage as folder:
        folder = Path(folder)
        model = StarDist2D(conf, name=folder.name, basedir=str(folder.parent))
        init = str(init_weights) if init_weights is not None else None
        save_training_json(folder, s, init_weights=init)  # beside config.json, before any weights
        adaptation = None
        if base is not None:
            adaptation = transfer_weights(base, model.keras_model, n_channel)
            model.keras_model.save_weights(str(folder / START_WEIGHTS))  # a candidate for the final model
        elif init_weights is not None:
            model.keras_model.load_weights(str(init_weights))
        thresholds0 = dict(base.thresholds) if base is not None else {"prob": 0.5, "nms": 0.4}
        model.prepare_for_training()
        ckpts.model, ckpts.workdir = model.keras_model, folder

        total, budget = s.epochs, s.time_budget
        t0, done = time.time(), 0
        state = {"stopped": False, "best_ap": -1.0, "val_ap50": [], "history": {}}
        augmenter = partial(_augment, settings=s.augment)
        if saved is not None:
            restore(ckpts, saved, model, progress)
            ckpts.restore_kept()
            remove_stale_stages(folder, name)
            done, t0 = int(saved["epoch"]), time.time() - float(saved["seconds"])
            t_start -= float(saved["seconds"])  # the card's time: the whole run's
            state.update(best_ap=float(saved["best_ap"]), val_ap50=[tuple(p) for p in saved["val_ap50"]],
                         history={k: [float(v) for v in vals] for k, vals in saved["history"].items()})
            augmenter = ContinueRandom(augmenter, saved.get("np_random"))

        class _Report(tf.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                if saved is not None:  # after ReduceLROnPlateau's reset
                    restore_plateau(model, saved.get("reduce_lr"))

            def on_train_batch_end(self, batch, logs=None):
                if progress.stop_requested or (budget and time.time() - t0 >= budget):
                    state["stopped"] = True
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                epoch += done  # the run's epoch (0-based), also after a resumption
                logs = {k: float(v) for k, v in (logs or {}).items()}
                for k, v in logs.items():
                    state["history"].setdefault(k, []).append(v)
                if s.val_ap_every and ((epoch + 1) % s.val_ap_every == 0 or epoch + 1 == total
                                       or state["stopped"]):
                    ap = ap50(model, Xv, Yv, thresholds0["prob"], thresholds0["nms"])
                    state["val_ap50"].append((epoch + 1, ap))
                    logs["val_ap50"] = ap
                    if ap > state["best_ap"]:
                        state["best_ap"] = ap
                        model.keras_model.save_weights(str(folder / "weights_ap.h5"))
                if s.save_every and (epoch + 1) % s.save_every == 0:
                    model.keras_model.save_weights(str(folder / f"weights_e{epoch + 1:03d}.h5"))
                ckpts.save(epoch_state(model, epoch + 1, state, time.time() - t0))  # before the event
                frac = (epoch + 1) / total
                if budget:
                    frac = max(frac, min(1.0, (time.time() - t0) / budget))
                progress(frac, epoch_message(epoch + 1, total), epoch=epoch + 1, seconds=time.time() - t0, **logs)
                if progress.stop_requested:
                    state["stopped"] = True
                    self.model.stop_training = True

        model.callbacks.append(_Report())
        try:
            if total > done:
                model.train(X, Y, validation_data=(Xv, Yv), augmenter=augmenter, epochs=total - done,
                            steps_per_epoch=s.steps_per_epoch)
            else:  # interrupted after its last epoch: its last weights are the checkpoint's
                model.keras_model.save_weights(str(folder / "weights_last.h5"))
        except BaseException:
            ckpts.release()  # an error or Ctrl-C: the checkpoint stays, to resume from
            raise
        history = dict(state["history"])
        if state["val_ap50"]:
            history["val_ap50"] = [ap for _, ap in state["val_ap50"]]
            history["val_ap50_epochs"] = [e for e, _ in state["val_ap50"]]
        seconds = time.time() - t0
        epochs_run = len(history.get("loss", []))

        chosen, thresholds = "weights_best.h5", None
        if card or optimize_thresholds:
            chosen, thresholds = choose_weights(model, folder, Xv, Yv, optimize_thresholds, thresholds0, progress,
                                                threshold_images)
            if chosen != "weights_best.h5":  # the file stardist loads: the newest with "best" in its name
                if (folder / "weights_best.h5").is_file():
                    (folder / "weights_best.h5").rename(folder / "weights_minloss.h5")
                shutil.copyfile(folder / chosen, folder / "weights_best.h5")
            model.keras_model.load_weights(str(folder / "weights_best.h5"))
            atomic_write_text(folder / "thresholds.json",
                              json.dumps({"prob": thresholds["prob"], "nms": thresholds["nms"]}))
        elif (folder / "weights_best.h5").exists():
            model.load_weights("weights_best.h5")
        for extra in ("weights_now.h5", "weights_ap.h5", START_WEIGHTS):  # working copies; best/last stay
            (folder / extra).unlink(missing_ok=True)
        save_training_json(folder, s, init_weights=init, history=history, seconds=seconds)  # atomic
        metrics = {}
        if card:
            from ...core.registry import write_card
            from ..evaluate import score_segmentations
            from .finetune import network_outputs, val_labels

            progress(None, "scoring the validation images")
            tp = time.time()
            raw = network_outputs(model, Xv)
            preds = val_labels(model, raw, [m.shape for m in Yv], thresholds["prob"], thresholds["nms"])
            metrics = {"val": score_segmentations(Yv, preds).card_metrics(time.time() - tp)}
            summary = data_summary(images, masks, val_images, val_masks)
            c = build_card(name, n_channel, s, base=base, adaptation=adaptation, data=data, command=command,
                           history=history, seconds=time.time() - t_start, epochs_run=epochs_run,
                           stopped=state["stopped"], thresholds={k: thresholds[k] for k in ("prob", "nms")},
                           metrics=metrics, weights=chosen, init_weights=init, summary=summary)
            c.training.update(train_seconds=round(seconds, 1), **ckpts.record())
            write_card(c, folder)
    ckpts.finish()  # the model is saved: the run's checkpoint is no longer needed
    if metrics:
        progress(1.0, f"saved {dest} (val AP@0.5 {metrics['val']['ap@0.5']:.3f})", **metrics["val"])
    return StarDistTrainResult(str(dest), epochs_run, seconds, history, thresholds, metrics, state["stopped"],
                               chosen, adaptation, s.to_dict())


def train_job(progress, images, masks, val_images, val_masks, out_dir=None, name: str = "stardist",
              settings: dict | None = None, init_folder=None, data=None, command=None, init_weights=None,
              optimize_thresholds: bool = True, basedir=None, resume: bool = False):
    """Worker entry (``stardist.train``), with the U-Net job's parameters: ``settings`` as a plain
    dict of :class:`StarDistTrainSettings` fields; ``init_folder`` a base model (its folder or
    card payload; None: a fresh network); ``data`` / ``command`` recorded in the card; ``out_dir``
    (or the former ``basedir``) defaults to the per-user models folder, where the registry finds
    the new model at once. A name that is taken (by any model) is refused; the folder is written
    atomically. ``init_weights`` (a weights file) is the older way to start from weights.
    ``resume`` continues the interrupted run ``name`` (with its settings when ``settings`` is None)."""
    from ...core.registry import ModelRegistry
    from ..checkpoint import guarded_run, resume_settings
    from ..training.naming import check_new_name

    out = out_dir if out_dir is not None else basedir
    registry = ModelRegistry(user_dir=out) if out is not None else ModelRegistry()
    settings = resume_settings(registry.user_dir, str(name or "").strip(), settings, resume)
    s = StarDistTrainSettings.from_dict(settings)  # a bad value fails before anything is loaded
    name = check_new_name(name, registry)
    with guarded_run(registry.user_dir, name):
        return train_stardist2d(list(images), list(masks), list(val_images), list(val_masks), registry.user_dir,
                                name, s, init_weights=init_weights, optimize_thresholds=optimize_thresholds,
                                progress=progress, init_folder=init_folder, data=data, command=command, atomic=True,
                                resume=resume)
