"""Train (or fine-tune) the U-Net; the result is a model folder with a card.

Random patches (flips, 90° rotations, intensity jitter) -> Adam on a class-weighted
cross-entropy (optionally + soft Dice) of the 3-class targets. After every epoch the
model segments the validation images through the same tiled predictor and watershed
used at inference time; the weights with the best validation AP@0.5 are kept. At the
end the watershed seed threshold is tuned on the validation images.

PyTorch is imported inside the functions; no DataLoader workers are used (the compute
worker is a daemon process and may not fork).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.normalize import percentile_normalize
from ...core.progress import NULL_PROGRESS, Progress
from ..augment import AugmentSettings, augment
from ..settings import EpochTrainSettings
from ..training.epochs import epoch_message
from .options import UPSAMPLING
from .targets import instances_from_probs, labels_to_target

SEED_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3 .. 0.9
EVAL_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class UNetTrainSettings(EpochTrainSettings):
    """Settings of :func:`train_unet` (``depth``, ``base_filters``, ``upsampling``, ``batch_norm``:
    the network's, unless it is fine-tuned from a model folder). ``augment.zoom`` (off by default)
    zooms the 3-class target by nearest neighbour, so the boundary width scales with the zoom."""

    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 8
    #: side of the square training patches; a multiple of ``2 ** depth``
    patch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    class_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    dice_weight: float = 0.0
    cosine_schedule: bool = True
    depth: int = 3
    base_filters: int = 16
    upsampling: str = "bilinear"
    batch_norm: bool = True
    fg_thresh: float = 0.5
    min_size: int = 8
    seed_grid: tuple[float, ...] = SEED_GRID
    val_tile_size: int = 512

    label = "U-Net training settings"
    aliases = {"lr": "learning_rate"}

    def __post_init__(self):
        for name in ("class_weights", "seed_grid"):  # numbers as floats (JSON may give ints)
            try:
                setattr(self, name, tuple(float(v) for v in getattr(self, name)))
            except (TypeError, ValueError):
                pass  # validate() names the bad value
        super().__post_init__()

    def pooling(self) -> tuple[int, int]:
        return (2 ** int(self.depth),) * 2

    def validate(self) -> None:
        self._int("depth")
        if self.depth > 6:
            self._fail(f"depth must be 1..6, got {self.depth}")
        self._int("base_filters")
        if self.upsampling not in UPSAMPLING:
            self._fail(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {self.upsampling!r}")
        super().validate()
        if self.patch_shape[0] != self.patch_shape[1]:
            self._fail(f"patch_size: square patches only (one side), got {self.patch_size!r}")
        self._positive("weight_decay", allow_zero=True)
        self._positive("dice_weight", allow_zero=True)
        self._int("min_size", 0)
        self._int("val_tile_size", 16)
        cw = self.class_weights
        if not (isinstance(cw, tuple) and len(cw) == 3 and all(isinstance(w, (int, float)) and w > 0 for w in cw)):
            self._fail(f"class_weights needs 3 positive numbers, got {cw!r}")
        sg = self.seed_grid
        if not (isinstance(sg, tuple) and sg and all(isinstance(t, (int, float)) and 0 < t < 1 for t in sg)):
            self._fail(f"seed_grid needs thresholds in 0..1, got {sg!r}")
        if not (isinstance(self.fg_thresh, (int, float)) and 0 <= self.fg_thresh <= 1):
            self._fail(f"fg_thresh must lie in 0..1, got {self.fg_thresh!r}")


@dataclass
class UNetTrainResult:
    model_dir: str
    epochs_run: int
    best_epoch: int
    seconds: float
    history: dict
    thresholds: dict
    metrics: dict
    stopped: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def kept_base(self) -> bool:
        """No epoch of the fine-tune beat its base on the validation part: the base's weights were kept."""
        return self.best_epoch == 0


def _as_chw(image: np.ndarray, n_ch: int, pmin: float, pmax: float) -> np.ndarray:
    x = percentile_normalize(image, pmin, pmax)  # channels jointly, as at prediction time
    return np.ascontiguousarray(np.moveaxis(x, -1, 0) if n_ch > 1 else x[None])


def _channels(images) -> int:
    chans = {1 if im.ndim == 2 else (im.shape[-1] if im.ndim == 3 else -1) for im in images}
    if -1 in chans or len(chans) != 1:
        raise InputError("all images must be 2D (YX) or all YXC with the same number of channels; "
                         f"got shapes {sorted({im.shape for im in images})[:5]}")
    return chans.pop()


def _pad_to(x: np.ndarray, y: np.ndarray, size: int):
    """Mirror-pad a (C, H, W) image and its (H, W) target to at least size x size."""
    ph, pw = max(0, size - x.shape[1]), max(0, size - x.shape[2])
    if not ph and not pw:
        return x, y
    pads = ((0, ph), (0, pw))
    mode = "reflect" if min(x.shape[1:]) > 1 else "edge"
    return np.pad(x, ((0, 0),) + pads, mode=mode), np.pad(y, pads, mode=mode)


class _PatchSampler:
    """Random augmented patches; images are drawn in proportion to their area."""

    def __init__(self, X, Y, patch, rng, augment_settings: AugmentSettings | None = None):
        self.X, self.Y, self.patch, self.rng = X, Y, patch, rng
        self.augment = augment_settings or AugmentSettings()
        area = np.array([y.size for y in Y], np.float64)
        self.p = area / area.sum()

    def sample(self, n):
        ps = self.patch
        xb = np.empty((n, self.X[0].shape[0], ps, ps), np.float32)
        yb = np.empty((n, ps, ps), np.int64)
        for b in range(n):
            i = self.rng.choice(len(self.X), p=self.p)
            x, y = self.X[i], self.Y[i]
            r0 = self.rng.integers(0, y.shape[0] - ps + 1)
            c0 = self.rng.integers(0, y.shape[1] - ps + 1)
            out = augment(self.rng, x[:, r0:r0 + ps, c0:c0 + ps], y[r0:r0 + ps, c0:c0 + ps], settings=self.augment,
                          y_axis=1)
            xb[b], yb[b] = out.image, out.labels
        return xb, yb


def _weighted_nll(probs: np.ndarray, target: np.ndarray, weights) -> tuple[float, float]:
    """Sum of w_y * -log p_y and sum of w_y over the pixels (cross_entropy's weighting)."""
    w = np.asarray(weights, np.float64)[target]
    p = np.take_along_axis(probs, target[None].astype(np.int64), 0)[0]
    return float((w * -np.log(np.clip(p, 1e-7, 1.0))).sum()), float(w.sum())


def _ap(truths, preds, ious=(0.5,)) -> list[float]:
    from stardist.matching import matching_dataset

    stats = matching_dataset(list(truths), list(preds), thresh=list(ious), show_progress=False, by_image=False)
    stats = stats if isinstance(stats, (list, tuple)) and not hasattr(stats, "_fields") else [stats]
    return [float(s.accuracy) for s in stats]


def _loss_fn(weights, dice_weight):
    import torch
    import torch.nn.functional as F

    def loss(logits, y):
        ce = F.cross_entropy(logits, y, weight=weights)
        if not dice_weight:
            return ce
        p = torch.softmax(logits, 1)[:, 1:]
        t = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(p.dtype)
        inter = (p * t).sum((0, 2, 3))
        dice = (2 * inter + 1.0) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1.0)
        return ce + dice_weight * (1 - dice.mean())

    return loss


def train_unet(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    val_images: list[np.ndarray],
    val_masks: list[np.ndarray],
    out_dir: str | Path,
    name: str,
    settings: UNetTrainSettings | None = None,
    init_folder: str | Path | None = None,
    progress: Progress = NULL_PROGRESS,
    *,
    data: str | None = None,
    command: str | None = None,
    resume: bool = False,
) -> UNetTrainResult:
    """Train a U-Net into ``out_dir/name`` (config.json, weights.pt, model.json, training.json).

    ``images`` are YX or YXC arrays, ``masks`` their instance label images. ``init_folder``
    fine-tunes an existing U-Net folder (its architecture wins over the settings').
    ``progress`` gets one event per epoch (``epoch``, ``loss``, ``val_loss``, ``val_ap50``,
    ``seconds``); a stop request ends training after the current epoch and keeps the best
    weights so far. ``data`` and ``command`` are recorded in the model card.

    A checkpoint is written after every epoch into ``out_dir/.training/name``
    (:mod:`..checkpoint`) and removed once the model is saved; ``resume`` continues the
    interrupted run of that name from its last epoch (InputError when there is none, or when
    the architecture, settings or data differ).
    """
    s = settings or UNetTrainSettings()
    s.validate()
    if not images:
        raise InputError("no training images")
    if len(images) != len(masks) or len(val_images) != len(val_masks):
        raise InputError("every image needs exactly one mask")
    if not val_images:
        raise InputError("no validation images (they choose the best epoch and the thresholds)")
    for im, mk in zip(list(images) + list(val_images), list(masks) + list(val_masks)):
        if im.shape[:2] != mk.shape:
            raise InputError(f"image shape {im.shape} does not match its mask shape {mk.shape}")

    import torch

    from .io import load_model, save_model
    from .model import UNetConfig, build_unet
    from .predict import predict_probs

    n_ch = _channels(list(images) + list(val_images))
    t0 = time.time()
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)

    adaptation = None  # a base model for other channels: its first convolution adapted (backends/channels.py)
    if init_folder is not None:
        loaded = load_model(init_folder, use_cache=False)
        config, model = loaded.config, loaded.model
        if config.in_channels != n_ch:
            from ..channels import adapt_state

            state, adaptation = adapt_state({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                                            n_ch, "down.0.0.weight", "down.0.0.bias", "down.0.1.running_mean")
            config = UNetConfig.from_dict({**config.to_dict(), "in_channels": n_ch})
            model = build_unet(config)
            model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    else:
        config = UNetConfig(in_channels=n_ch, n_classes=3, depth=s.depth, base_filters=s.base_filters,
                            upsampling=s.upsampling, batch_norm=s.batch_norm)
        model = build_unet(config)
    patch = s.patch_shape[0]
    s.check_patch((patch, patch), (config.multiple,) * 2)  # the network trained: an init folder's wins
    progress(0.0, "preparing the training data")
    X, Y = [], []
    for im, mk in zip(images, masks):
        x, y = _pad_to(_as_chw(im, n_ch, s.pmin, s.pmax), labels_to_target(mk), patch)
        X.append(x)
        Y.append(y)
    Xv = [_as_chw(im, n_ch, s.pmin, s.pmax) for im in val_images]
    Yv = [np.asarray(mk).astype(np.int32) for mk in val_masks]
    Tv = [labels_to_target(mk) for mk in Yv]

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    total_steps = s.epochs * s.steps_per_epoch
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=s.learning_rate * 0.05)
             if s.cosine_schedule else None)
    loss_fn = _loss_fn(torch.tensor(s.class_weights, dtype=torch.float32, device=dev), s.dice_weight)
    sampler = _PatchSampler(X, Y, patch, rng, s.augment)

    def validate():
        probs = [predict_probs(model, x, tile_size=s.val_tile_size) for x in Xv]
        num = den = 0.0
        for p, t in zip(probs, Tv):
            a, b = _weighted_nll(p, t, s.class_weights)
            num, den = num + a, den + b
        return probs, num / max(den, 1e-12)

    history: dict[str, list[float]] = {"loss": [], "val_loss": [], "val_ap50": [], "lr": []}
    best = (-1.0, float("inf"))
    best_state, best_epoch, stopped = None, 0, False
    from ..checkpoint import RunCheckpoints, fingerprint, restore_state, run_dir, training_state

    ckpts = RunCheckpoints(run_dir(out_dir, name), name, {
        "kind": "unet", "architecture": config.to_dict(), "channels": n_ch, "epochs": s.epochs,
        "base": str(Path(init_folder).resolve()) if init_folder is not None else None,
        "settings": s.to_dict(), "data": fingerprint(images, masks, val_images, val_masks)}, progress)
    ck = ckpts.begin(resume)
    start = 1
    if ck is not None:
        start = restore_state(ck, model, opt, sched, rng) + 1
        if sched is not None:
            sched.T_max = total_steps  # the planned length of this call (a resumption may change the epochs)
        history = {k: [float(v) for v in vals] for k, vals in ck["history"].items()}
        best, best_epoch = (float(ck["best_metric"][0]), float(ck["best_metric"][1])), int(ck["best_epoch"])
        best_state = ck["best_state"]
        t0 = time.time() - float(ck["seconds"])
    elif init_folder is not None:  # a fine-tune: its start (the base) competes as "epoch 0"
        probs, val_loss = validate()
        best = (_ap(Yv, [instances_from_probs(p, 0.5, s.fg_thresh, s.min_size) for p in probs])[0], val_loss)
        best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    try:
        for epoch in range(start, s.epochs + 1):
            model.train()
            run = 0.0
            for _ in range(s.steps_per_epoch):
                xb, yb = sampler.sample(s.batch_size)
                xb, yb = torch.from_numpy(xb).to(dev), torch.from_numpy(yb).to(dev)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                run += float(loss.detach())
            probs, val_loss = validate()
            preds = [instances_from_probs(p, 0.5, s.fg_thresh, s.min_size) for p in probs]
            ap50 = _ap(Yv, preds)[0]
            loss_avg = run / s.steps_per_epoch
            for k, v in (("loss", loss_avg), ("val_loss", val_loss), ("val_ap50", ap50),
                         ("lr", opt.param_groups[0]["lr"])):
                history[k].append(float(v))
            if (ap50, -val_loss) > (best[0], -best[1]):
                best = (ap50, val_loss)
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                best_epoch = epoch
            ckpts.save(training_state(epoch, model, opt, sched, rng, history=history, best_metric=list(best),
                                      best_epoch=best_epoch, best_state=best_state, seconds=time.time() - t0))
            progress(epoch / s.epochs, epoch_message(epoch, s.epochs), epoch=epoch, loss=loss_avg, val_loss=val_loss,
                     val_ap50=ap50, best_epoch=best_epoch, seconds=time.time() - t0)
            if progress.stop_requested:
                stopped = True
                break
    except BaseException:
        ckpts.release()  # an error or Ctrl-C: the checkpoint stays, to resume from
        raise
    epochs_run = len(history["loss"])
    model.load_state_dict(best_state)
    model.eval()

    progress(None, "choosing the seed threshold on the validation images")
    probs, _ = validate()
    best_t, best_score, scores = 0.5, -1.0, {}
    for t in s.seed_grid:
        preds = [instances_from_probs(p, t, s.fg_thresh, s.min_size) for p in probs]
        score = float(np.mean(_ap(Yv, preds, EVAL_IOUS)))
        scores[t] = score
        if score > best_score + 1e-9 or (abs(score - best_score) <= 1e-9 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_score = t, score
    preds = [instances_from_probs(p, best_t, s.fg_thresh, s.min_size) for p in probs]
    from ..evaluate import score_segmentations

    val_scores = score_segmentations(Yv, preds, EVAL_IOUS)  # the same figures as a StarDist card's
    metrics = {"val": {**val_scores.card_metrics(), "mean_ap": round(float(np.mean(val_scores.ap)), 4)}}
    thresholds = {"seed": best_t, "fg": s.fg_thresh, "min_size": s.min_size}
    seconds = time.time() - t0
    settings_d = s.to_dict()
    training = {
        "data": data or f"{len(images)} training and {len(val_images)} validation images",
        "command": command or "napari_cnnvision.backends.unet.train.train_unet",
        "seconds": round(seconds, 1), "epochs": epochs_run, "best_epoch": best_epoch, "stopped_early": stopped,
        "steps_per_epoch": s.steps_per_epoch, "batch_size": s.batch_size, "patch_size": patch,
        "init_folder": str(init_folder) if init_folder is not None else None, "channel_adaptation": adaptation,
        "settings": settings_d,
        **ckpts.record(),
    }
    folder = save_model(Path(out_dir) / name, model, config, name=name, pmin=s.pmin, pmax=s.pmax,
                        thresholds=thresholds, training=training, metrics=metrics,
                        extra_files={"training.json": json.dumps(
                            {"history": history, "seed_scores": {str(k): v for k, v in scores.items()},
                             "settings": settings_d, "seconds": seconds}, indent=1) + "\n"})
    ckpts.finish()  # registered: the run's checkpoint is no longer needed
    progress(1.0, f"saved {folder} (val AP@0.5 {metrics['val']['ap@0.5']:.3f})", **metrics["val"])
    return UNetTrainResult(str(folder), epochs_run, best_epoch, seconds, history, thresholds, metrics,
                           stopped, settings_d)


def train_job(progress, images, masks, val_images, val_masks, out_dir=None, name: str = "unet",
              settings: dict | None = None, init_folder=None, basedir=None, data=None, command=None,
              resume: bool = False):
    """Worker entry: ``settings`` as a plain dict of :class:`UNetTrainSettings` fields.

    ``out_dir`` (or ``basedir``) defaults to the per-user models folder, where the
    registry finds the new model. ``resume`` continues the interrupted run ``name`` (with its
    settings when ``settings`` is None).
    """
    from ..checkpoint import guarded_run, resume_settings

    out = out_dir or basedir
    if out is None:
        from ...core.registry import ModelRegistry

        out = ModelRegistry().user_dir
    if not resume:  # never overwrite a model silently (the widget and CLI check first; this holds for any caller)
        from ...core.registry import ModelRegistry
        from ..training.naming import check_new_name

        name = check_new_name(name, ModelRegistry(user_dir=out))
    s = UNetTrainSettings.from_dict(resume_settings(out, name, settings, resume))
    with guarded_run(out, name):
        return train_unet(list(images), list(masks), list(val_images), list(val_masks), out, name, s,
                          init_folder=init_folder, progress=progress, data=data, command=command, resume=resume)
