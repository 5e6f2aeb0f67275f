"""Train the localizer: one box + one class per image.

The images are prepared once (normalized, resized to the input size: :func:`prepare_set`) and
kept in memory. Every epoch draws a class-balanced sample of the training images (sampling
weight ``count ** -balance`` per class), augments each batch (the 8 flips / 90° turns of a
square input, or only the 4 flips of another or with ``turns=False``, a random zoom and shift,
intensity jitter; the boxes are transformed with the image) and minimizes ``CE + λ·MSE``
(class-weighted cross-entropy, weight ``count ** -class_weight_power``, + λ = ``box_weight`` times
the mean squared error of the normalized ``cx, cy, w, h``) with AdamW and a cosine learning rate over the run (epochs or a
time budget, whichever ends first). After every epoch the validation images are scored
(accuracy, balanced accuracy, mean box IoU); the epoch with the best ``selection`` score
(their mean) is kept. ``progress.stop_requested`` stops the run after the current step, keeping
the best epoch so far. With a run folder, a checkpoint after every epoch lets an interrupted run
resume (:mod:`..checkpoint`).

PyTorch is imported inside the functions; no DataLoader workers (the compute worker is a
daemon process and may not fork).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.progress import NULL_PROGRESS, Progress
from .augment import augment_batch  # noqa: F401 (its former home)
from .metrics import localization_scores
from .settings import LocalizerAugment, LocalizerTrainSettings


@dataclass
class LocalizationSet:
    """Prepared images ``(n, 3, h, w)`` float32, class ids ``(n,)`` and boxes ``(n, 4)``
    normalized ``cx, cy, w, h`` in 0..1; ``names`` the image names (optional)."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LocalizerTrainResult:
    model: object  # Localizer (the kept weights, eval mode)
    config: object  # LocalizerConfig
    class_names: list[str]
    epochs_run: int
    best_epoch: int
    seconds: float
    history: list[dict]
    metrics: dict  # val scores of the kept epoch
    stopped: bool = False
    settings: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)  # resumed_after_epoch, checkpoint_warnings
    #: a fine-tune whose start (the base, its class head rebuilt) no epoch beat on val: the model is the start
    kept_base: bool = False


def prepare_set(images, boxes_yxyx, labels, input_size, normalization: dict, names=None) -> LocalizationSet:
    """Prepare images of any size with their pixel boxes ``(y0, x0, y1, x1)`` for training."""
    from .model import yxyx_to_cxcywh
    from .preprocess import to_input

    xs, bs = [], []
    for im, b in zip(images, boxes_yxyx):
        h, w = np.asarray(im).shape[:2]
        xs.append(to_input(im, input_size, normalization))
        bs.append(yxyx_to_cxcywh(np.asarray(b, np.float64).reshape(1, 4), h, w)[0])
    return LocalizationSet(np.stack(xs).astype(np.float32), np.asarray(labels, np.int64),
                           np.clip(np.asarray(bs, np.float32), 0, 1), None if names is None else list(names))


def class_balance(labels: np.ndarray, n_classes: int, settings: LocalizerTrainSettings):
    """(per-image sampling probabilities, CE class weights with mean 1 over the images)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    eff = np.maximum(counts, settings.min_class_count)
    p = eff[labels] ** -settings.balance
    p /= p.sum()
    w = eff ** -settings.class_weight_power
    w /= (w[labels] * p).sum()  # mean weight 1 over the sampled images
    return p, w.astype(np.float32)


def _lr_factor(frac: float, warm: float) -> float:
    if frac < warm:
        return max(frac / warm, 0.02)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warm) / max(1e-9, 1 - warm))))


def evaluate_set(model, data: LocalizationSet, class_names: list[str], box_weight: float,
                 batch_size: int = 32) -> dict:
    """Val losses and scores of ``model`` on a prepared set."""
    import torch
    from torch.nn import functional as F

    from .model import cxcywh_to_yxyx

    model.eval()
    probs, boxes = [], []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            out = model(torch.from_numpy(data.images[i:i + batch_size]))
            probs.append(out["probabilities"])
            boxes.append(out["boxes"])
    probs, boxes = torch.cat(probs), torch.cat(boxes)
    labels = torch.from_numpy(data.labels)
    truth = torch.from_numpy(data.boxes)
    loss_class = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), labels))
    loss_box = float(F.mse_loss(boxes, truth))
    scores = localization_scores(probs.argmax(1).numpy(), data.labels, cxcywh_to_yxyx(boxes.numpy(), 1, 1),
                                 cxcywh_to_yxyx(data.boxes, 1, 1), class_names)
    return {"loss": loss_class + box_weight * loss_box, "loss_class": loss_class, "loss_box": loss_box, **scores}


def selection_score(scores: dict) -> float:
    """What chooses the kept epoch: the mean of accuracy, balanced accuracy and mean box IoU."""
    return (scores["accuracy"] + scores["balanced_accuracy"] + scores["mean_iou"]) / 3


class _EMA:
    """Exponential moving average of the weights and BatchNorm statistics; the decay ramps up
    as ``min(decay, (1 + t) / (10 + t))`` so that the average follows the first steps closely."""

    def __init__(self, model, decay: float):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    def update(self, model) -> None:
        import torch

        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        with torch.no_grad():
            src = model.state_dict()
            for k, v in self.model.state_dict().items():
                if v.is_floating_point():
                    v.mul_(d).add_(src[k].detach(), alpha=1 - d)
                else:
                    v.copy_(src[k])


def _save_checkpoint(path: Path, model, info: dict) -> None:
    import torch

    from ...core.io import atomic_write_text, atomic_write_with
    from .io import _state_dict

    state = _state_dict(model)
    atomic_write_with(path, lambda tmp: torch.save(state, tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


def _save_weights(ckpt_dir: Path, net, best_epoch: int, row: dict, metrics: dict, history: list, progress) -> None:
    """``best.pt`` (when this epoch is the best), ``last.pt`` and ``history.json``; a full disk is
    reported (the files of the epoch before stay) and the training goes on."""
    from ...core.io import atomic_write_text
    from ..checkpoint import disk_message

    try:
        if best_epoch == row["epoch"]:
            _save_checkpoint(ckpt_dir / "best.pt", net, {"epoch": row["epoch"], "metrics": metrics, "row": row})
        _save_checkpoint(ckpt_dir / "last.pt", net, {"epoch": row["epoch"], "row": row})
        atomic_write_text(ckpt_dir.parent / "history.json", json.dumps(history, indent=1) + "\n")
    except OSError as exc:
        progress(None, f"could not save the weights of epoch {row['epoch']} ({disk_message(exc)}); training goes on",
                 checkpoint_error=disk_message(exc))


def _plain_floats(d: dict) -> dict:
    """Metrics as plain numbers (a weights-only checkpoint takes no numpy scalars)."""
    return json.loads(json.dumps(d, default=float))


def train_localizer(train: LocalizationSet, val: LocalizationSet | None, class_names: list[str],
                    settings: LocalizerTrainSettings | None = None, out_dir: str | Path | None = None,
                    progress: Progress = NULL_PROGRESS, init_state: dict | None = None,
                    resume: bool = False, base_competes: bool = False) -> LocalizerTrainResult:
    """Train a localizer on ``train``, keep the epoch best on ``val`` (the last one without val).

    ``out_dir`` (optional) receives ``checkpoints/best.pt`` / ``last.pt`` (state_dicts, with a
    JSON of their epoch and scores), ``history.json`` and the run's resumable ``checkpoint.pt``
    (:mod:`..checkpoint`) after every epoch; ``resume`` continues the run that ``out_dir`` holds
    from its last epoch (InputError when there is none, or when the classes, architecture,
    settings or data differ).
    """
    import torch

    from ..checkpoint import RunCheckpoints, fingerprint, restore_state, training_state
    from .model import LocalizerConfig, build_localizer

    s = settings if isinstance(settings, LocalizerTrainSettings) else LocalizerTrainSettings.from_dict(settings)
    s.validate()  # after any change made since it was built
    n_classes = len(class_names)
    if len(train) == 0:
        raise ValueError("no training images")
    if train.labels.min() < 0 or train.labels.max() >= n_classes:
        raise ValueError(f"training labels must lie in 0..{n_classes - 1}")
    t0 = time.monotonic()
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    config = LocalizerConfig(n_classes=n_classes, in_channels=train.images.shape[1],
                             input_size=tuple(train.images.shape[2:]), widths=s.widths,
                             convs_per_stage=s.convs_per_stage, dropout=s.dropout)
    model = build_localizer(config)
    if init_state is not None:
        model.load_state_dict(init_state)
    ema = _EMA(model, s.ema) if s.ema else None
    opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
    p_sample, cw = class_balance(train.labels, n_classes, s)
    class_weights = torch.from_numpy(cw)
    steps = max(1, int(math.ceil(len(train) / s.batch_size)))
    warm = s.warmup_epochs / s.epochs
    ckpt_dir = Path(out_dir) / "checkpoints" if out_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best = (-math.inf, 0, None, {})  # score, epoch, state, metrics
    stopped = False
    epoch = 0
    ckpts = None
    if out_dir is not None:
        ckpts = RunCheckpoints(out_dir, Path(out_dir).name, {
            "kind": "localizer", "classes": list(class_names), "architecture": config.to_dict(),
            "channels": int(train.images.shape[1]), "epochs": s.epochs, "settings": json.loads(s.to_json()),
            "base": fingerprint(init_state) if init_state is not None else None,
            "data": fingerprint(train.images, train.labels, train.boxes,
                                *((val.images, val.labels, val.boxes) if val is not None else ()))}, progress)
        ck = ckpts.begin(resume)
        if ck is not None:
            epoch = restore_state(ck, model, opt, rng=rng)
            if ema is not None and ck.get("ema") is not None:
                ema.model.load_state_dict(ck["ema"])
                ema.steps = int(ck["ema_steps"])
            history, bm = [dict(r) for r in ck["history"]], ck["best_metric"]
            best = (float(bm["score"]), int(ck["best_epoch"]), ck["best_state"], dict(bm["metrics"]))
            t0 = time.monotonic() - float(ck["seconds"])
    elif resume:
        raise ValueError("resume needs the run folder (out_dir) of the interrupted run")
    if base_competes and init_state is not None and epoch == 0 and val is not None and len(val):
        progress(0.0, "scoring the base model on the validation images")
        sc = evaluate_set(model, val, class_names, s.box_weight)
        best = (selection_score(sc), 0, copy.deepcopy(model.state_dict()), sc)
        progress(0.0, f"the base model: val accuracy {sc['accuracy']:.3f} (training keeps an epoch only if it "
                 "beats it)", base_val_accuracy=sc["accuracy"])

    def fraction() -> float:
        f = len(history) / s.epochs
        if s.time_budget:
            f = max(f, (time.monotonic() - t0) / s.time_budget)
        return f

    try:
        while epoch < s.epochs and not stopped:
            epoch += 1
            model.train()
            idx = rng.choice(len(train), size=steps * s.batch_size, replace=True, p=p_sample)
            tot = {"loss": 0.0, "loss_class": 0.0, "loss_box": 0.0}
            done = 0
            for k in range(steps):
                if progress.stop_requested:
                    stopped = True
                    break
                frac = min(1.0, fraction() + k / steps / s.epochs)
                for g in opt.param_groups:
                    g["lr"] = s.learning_rate * _lr_factor(frac, warm)
                bi = idx[k * s.batch_size:(k + 1) * s.batch_size]
                x = torch.from_numpy(train.images[bi])
                b = torch.from_numpy(train.boxes[bi])
                if s.augment.on:
                    x, b = augment_batch(x, b, rng, s)
                losses = model(x, {"labels": torch.from_numpy(train.labels[bi]), "boxes": b},
                               class_weights=class_weights, label_smoothing=s.label_smoothing)
                loss = losses["loss_class"] + s.box_weight * losses["loss_box"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the training loss became {float(loss)} at epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update(model)
                tot["loss"] += loss.item()
                tot["loss_class"] += losses["loss_class"].item()
                tot["loss_box"] += losses["loss_box"].item()
                done += 1
            if done == 0 and history:
                break
            net = ema.model if ema is not None else model
            row = {"epoch": epoch, "seconds": round(time.monotonic() - t0, 1),
                   "lr": opt.param_groups[0]["lr"], **{f"train_{k}": v / max(done, 1) for k, v in tot.items()}}
            if val is not None and len(val):
                sc = evaluate_set(net, val, class_names, s.box_weight)
                row.update({"val_loss": sc["loss"], "val_loss_class": sc["loss_class"], "val_loss_box": sc["loss_box"],
                            "val_accuracy": sc["accuracy"], "val_balanced_accuracy": sc["balanced_accuracy"],
                            "val_mean_iou": sc["mean_iou"], "val_iou_ge_0.5": sc["iou_ge_0.5"]})
                score = selection_score(sc)
            else:
                sc, score = {}, float(epoch)
            row["selection"] = score
            history.append(row)
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(net.state_dict()), sc)
            if ckpt_dir is not None:
                _save_weights(ckpt_dir, net, best[1], row, sc, history, progress)
                ckpts.save(training_state(
                    epoch, model, opt, rng=rng, ema=ema.model.state_dict() if ema is not None else None,
                    ema_steps=ema.steps if ema is not None else 0, history=[_plain_floats(r) for r in history],
                    best_metric={"score": float(best[0]), "metrics": _plain_floats(best[3])}, best_epoch=best[1],
                    best_state=best[2], seconds=time.monotonic() - t0))
            progress(min(1.0, fraction()), f"epoch {epoch}", **{k: v for k, v in row.items() if k != "epoch"},
                     epoch=epoch, best_epoch=best[1])
            if s.time_budget and time.monotonic() - t0 >= s.time_budget:
                break
    except BaseException:
        if ckpts is not None:
            ckpts.release()  # an error or Ctrl-C: the checkpoint stays, to resume from
        raise
    stopped = stopped or progress.stop_requested
    model = build_localizer(config)
    model.load_state_dict(best[2])
    model.eval()
    return LocalizerTrainResult(model=model, config=config, class_names=list(class_names), epochs_run=len(history),
                                best_epoch=best[1], seconds=time.monotonic() - t0, history=history,
                                metrics=best[3], stopped=stopped,
                                settings=json.loads(s.to_json()), checkpoint=ckpts.record() if ckpts else {},
                                kept_base=bool(base_competes and init_state is not None and best[1] == 0))


__all__ = ["LocalizerTrainSettings", "LocalizerAugment", "LocalizationSet", "LocalizerTrainResult", "prepare_set",
           "train_localizer", "augment_batch", "class_balance", "evaluate_set", "selection_score"]
