"""Train any detector that follows torchvision's detection convention (see :mod:`.models`).

AdamW with a linear warm-up and a cosine decay (over the epochs or the time budget, whichever
ends first); the shared box-aware augmentation (flips / 90° turns, intensity jitter, optional
zoom; :mod:`..augment`); after every
epoch the validation images are detected and the weights with the best mAP@0.5 are kept (a
fine-tune's starting weights compete as "epoch 0").
A checkpoint after every epoch lets an interrupted run resume. ``progress`` gets one event
per epoch (``train_loss``, ``val_loss``, ``val_map``); a stop request ends training after the
current epoch and keeps the best weights. No DataLoader workers (the compute worker is a
daemon process and may not fork); PyTorch is imported inside the functions.

A sample is a dict: ``image`` (H, W, C) array (uint8, or float in 0..1), ``boxes`` (m, 4)
x0, y0, x1, y1 in pixels, ``labels`` (m,) in 1..K.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.progress import NULL_PROGRESS, Progress
from ..augment import AugmentSettings
from ..settings import TrainSettings, _is_number
from ..training.epochs import epoch_message


def _detector_augment() -> AugmentSettings:
    """The detectors' augmentation defaults: the 8 flips / turns and a mild intensity jitter."""
    return AugmentSettings(flips=True, gain=(0.9, 1.1), offset=0.05, zoom=0.0)


@dataclass
class DetectorTrainSettings(TrainSettings):
    """Settings of :func:`train_detector` (the shared names of :mod:`..settings`). The detector
    sees whole images (its config's ``input_size`` and ``scale``) normalized by its card, so
    ``patch_size``, ``pmin`` and ``pmax`` are not used (nor saved). ``time_budget`` is in seconds;
    ``checkpoint`` a file written after every epoch, continued from with ``resume``."""

    epochs: int = 100
    batch_size: int = 8
    learning_rate: float = 2e-3
    augment: AugmentSettings = field(default_factory=_detector_augment)
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    min_lr_fraction: float = 0.05
    #: stop after this many seconds (the cosine schedule follows the elapsed fraction of it)
    time_budget: float | None = None
    val_every: int = 1
    val_score_thresh: float = 0.01
    grad_clip: float = 10.0
    checkpoint: str | None = None
    resume: bool = False
    device: str | None = None

    label = "detector training settings"
    aliases = {"lr": "learning_rate", "flips": "augment.flips", "gain": "augment.gain",
               "offset": "augment.offset", "zoom": "augment.zoom"}
    unused = ("patch_size", "pmin", "pmax")

    @classmethod
    def from_dict(cls, d: dict | None):
        """Also the former ``time_budget_min`` (minutes; ``time_budget`` is in seconds)."""
        d = dict(d or {})
        if "time_budget_min" in d:
            m = d.pop("time_budget_min")
            if "time_budget" not in d:
                d["time_budget"] = m * 60 if _is_number(m) else m
        return super().from_dict(d)

    def validate(self) -> None:
        super().validate()
        self._int("epochs")
        self._int("warmup_steps", 0)
        self._int("val_every")
        self._positive("weight_decay", allow_zero=True)
        self._positive("grad_clip", allow_zero=True)
        for name in ("min_lr_fraction", "val_score_thresh"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v <= 1:
                self._fail(f"{name} must be a number in 0..1, got {v!r}")
        if self.time_budget is not None:
            self._positive("time_budget")
        if not isinstance(self.resume, bool):
            self._fail(f"resume must be true or false, got {self.resume!r}")
        for name in ("checkpoint", "device"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                self._fail(f"{name} must be a text (a path, a device name) or None, got {v!r}")


def DetTrainSettings(**kw) -> DetectorTrainSettings:  # noqa: N802 (the former class name)
    """The former name of :class:`DetectorTrainSettings`; takes the former field names too
    (``lr``, ``flips``, ``gain``, ``offset``, ``zoom``, ``time_budget_min``)."""
    return DetectorTrainSettings.from_dict(kw)


@dataclass
class DetTrainResult:
    model_dir: str | None
    epochs_run: int
    best_epoch: int
    seconds: float
    history: dict
    metrics: dict
    stopped: bool = False
    settings: dict = field(default_factory=dict)
    #: a fine-tune whose start (the base, its heads rebuilt for the classes) was not beaten by any
    #: epoch on the validation images: the saved model holds the starting weights
    kept_base: bool = False


# --- samples and augmentation ---------------------------------------------------------
def _check_samples(samples, k: int, what: str):
    for i, s in enumerate(samples):
        im = np.asarray(s["image"])
        if im.ndim != 3:
            raise ValueError(f"{what} sample {i}: image must be (H, W, C), got shape {im.shape}")
        b = np.asarray(s["boxes"], np.float32).reshape(-1, 4)
        lab = np.asarray(s["labels"]).reshape(-1)
        if len(b) != len(lab):
            raise ValueError(f"{what} sample {i}: {len(b)} boxes but {len(lab)} labels")
        if len(lab) and (lab.min() < 1 or lab.max() > k):
            raise ValueError(f"{what} sample {i}: labels must be in 1..{k}, got {sorted(set(lab.tolist()))}")


def _to_float(image) -> np.ndarray:
    im = np.asarray(image)
    if im.dtype == np.uint8:
        return im.astype(np.float32) / 255.0
    return np.clip(im.astype(np.float32), 0.0, 1.0)


def _augment(sample, rng, s: DetectorTrainSettings):
    """One draw of the shared box-aware augmentation (:mod:`..augment`) on a float image."""
    from ..augment import augment

    x = _to_float(sample["image"])
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
    labels = np.asarray(sample["labels"], np.int64).reshape(-1)
    a = augment(rng, x, boxes=boxes[:, [1, 0, 3, 2]],
                settings=s.augment)
    b = a.boxes[:, [1, 0, 3, 2]].astype(np.float32)
    lab = labels[a.box_index]
    ok = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)  # a zoom can cut a box down to nothing
    return a.image.astype(np.float32), b[ok], lab[ok]


def _tensor(x: np.ndarray, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(device)


# --- evaluation -----------------------------------------------------------------------
def detect_samples(model, samples, device, batch_size: int = 4) -> list[dict]:
    """Eval-mode detections of samples as numpy dicts (boxes, labels, scores)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = [_tensor(_to_float(s["image"]), device) for s in samples[i:i + batch_size]]
            for d in model(batch):
                out.append({k: d[k].cpu().numpy() for k in ("boxes", "labels", "scores")})
    return out


def val_loss(model, samples, device, batch_size: int = 4) -> float:
    """Mean summed loss on samples without touching batch-norm statistics."""
    import torch

    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            imgs = [_tensor(_to_float(s["image"]), device) for s in chunk]
            tg = [_target(s["boxes"], s["labels"], device) for s in chunk]
            total += float(sum(model(imgs, tg).values())) * len(chunk)
            n += len(chunk)
    model.eval()
    return total / max(n, 1)


def _target(boxes, labels, device):
    import torch

    return {"boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4), device=device),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1), device=device)}


def val_map(model, samples, num_classes, device, score_thresh) -> dict:
    """mAP@0.5 and per-class AP of the model on samples (thresholds restored afterwards)."""
    from .boxap import average_precision
    from .models import set_thresholds

    old = (model.roi_heads if hasattr(model, "roi_heads") else model).score_thresh
    set_thresholds(model, score_thresh)
    try:
        preds = detect_samples(model, samples, device)
    finally:
        set_thresholds(model, old)
    return average_precision(preds, [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples], num_classes)


# --- training -------------------------------------------------------------------------
def _lr_factor(step: int, frac: float, s: DetectorTrainSettings) -> float:
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    frac = min(max(frac, 0.0), 1.0)
    return s.min_lr_fraction + (1 - s.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac))


def train_detector(model, config: dict, train: list[dict], val: list[dict], out_folder=None,
                   settings: DetectorTrainSettings | dict | None = None, progress: Progress = NULL_PROGRESS,
                   card_fields: dict | None = None, resume: bool | None = None,
                   base_competes: bool = False) -> DetTrainResult:
    """Train ``model`` (built from ``config``) and, if ``out_folder`` is given, save it there.

    The card gets the settings, the training time and the validation mAP@0.5 / per-class AP
    of the chosen epoch; ``card_fields`` adds to it (``training`` entries such as data,
    command and hardware are merged).

    A checkpoint is written after every epoch: to ``settings.checkpoint`` or, without one, into
    the run folder of ``out_folder`` (``<its parent>/.training/<its name>``, :mod:`..checkpoint`),
    which is removed once the model is saved. ``resume`` (default ``settings.resume``) continues
    the interrupted run from its last epoch; InputError when there is none, or when the classes,
    architecture, base model, settings or samples differ.

    ``base_competes`` (a fine-tune): the starting weights are scored on ``val`` first, as "epoch
    0"; an epoch must beat their mAP@0.5 to be kept (a tie keeps the start), so a fine-tune that
    learns nothing useful saves its base rather than something worse (``kept_base``).
    """
    import torch

    from ..checkpoint import RunCheckpoints, fingerprint, restore_state, run_dir, training_state
    from .models import save_detector

    s = settings if isinstance(settings, DetectorTrainSettings) else DetectorTrainSettings.from_dict(settings)
    s.validate()  # after any change made since it was built
    classes = list(config["classes"])
    k = len(classes)
    if not train:
        raise ValueError("no training samples")
    if not val:
        raise ValueError("no validation samples (they choose the best epoch)")
    _check_samples(train, k, "training")
    _check_samples(val, k, "validation")
    device = torch.device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.learning_rate,
                            weight_decay=s.weight_decay)
    history = {"train_loss": [], "val_loss": [], "val_map": [], "lr": [], "seconds": []}
    best_map, best_epoch, best_state, start_epoch, step, elapsed0 = -1.0, 0, None, 1, 0, 0.0
    ckpts = None
    if s.checkpoint or out_folder is not None:
        folder = Path(out_folder) if out_folder is not None else Path(s.checkpoint)
        base = ((card_fields or {}).get("training") or {}).get("base_model")
        ckpts = RunCheckpoints(run_dir(folder.parent, folder.name), folder.name, {
            "kind": "detector", "classes": classes, "architecture": {k: v for k, v in config.items() if k != "classes"},
            "base": base, "epochs": s.epochs, "settings": s.to_dict(), "data": fingerprint(train, val)},
            progress, file=s.checkpoint)
        c = ckpts.begin(s.resume if resume is None else bool(resume))
        if c is not None:
            restore_state(c, model, opt)
            history = {kk: [float(v) for v in vals] for kk, vals in c["history"].items()}
            best_map, best_epoch, best_state = float(c["best_metric"]), int(c["best_epoch"]), c["best_state"]
            start_epoch, step, elapsed0 = int(c["epoch"]) + 1, int(c["step"]), float(c["seconds"])
    if base_competes and start_epoch == 1:  # not resumed: the start competes as "epoch 0"
        progress(0.0, "scoring the base model on the validation images")
        best_map, best_epoch = val_map(model, val, k, device, s.val_score_thresh)["map"], 0
        best_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
        progress(0.0, f"the base model: val mAP@0.5 {best_map:.3f} (training keeps an epoch only if it beats this)",
                 base_val_map=best_map)
    t0 = time.time() - elapsed0
    budget = s.time_budget or None
    steps_per_epoch = math.ceil(len(train) / s.batch_size)
    total_steps = s.epochs * steps_per_epoch
    stopped, epoch_seconds = False, []
    try:
        for epoch in range(start_epoch, s.epochs + 1):
            te = time.time()
            rng = np.random.default_rng([s.seed, epoch])  # per epoch: a resumed run draws the same
            torch.manual_seed(s.seed * 100003 + epoch)
            order = rng.permutation(len(train))
            model.train()
            run, n_run = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * s.batch_size:(b + 1) * s.batch_size]
                imgs, tgs = [], []
                for i in idx:
                    x, boxes, labels = _augment(train[i], rng, s)
                    imgs.append(_tensor(x, device))
                    tgs.append(_target(boxes, labels, device))
                frac = step / total_steps
                if budget:
                    frac = max(frac, (time.time() - t0) / budget)
                for g in opt.param_groups:
                    g["lr"] = s.learning_rate * _lr_factor(step, frac, s)
                losses = model(imgs, tgs)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    parts = {k2: float(v) for k2, v in losses.items()}
                    raise FloatingPointError(f"the training loss is not finite at epoch {epoch} ({parts})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                opt.step()
                step += 1
                run += float(loss.detach()) * len(idx)
                n_run += len(idx)
                if progress.stop_requested:
                    break
            do_val = epoch % s.val_every == 0 or epoch == s.epochs or progress.stop_requested
            vl, vm = float("nan"), float("nan")
            if do_val:
                vl = val_loss(model, val, device)
                vm = val_map(model, val, k, device, s.val_score_thresh)["map"]
                if vm > best_map:
                    best_map, best_epoch = vm, epoch
                    best_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
            elapsed = time.time() - t0
            for key, v in (("train_loss", run / max(n_run, 1)), ("val_loss", vl), ("val_map", vm),
                           ("lr", opt.param_groups[0]["lr"]), ("seconds", elapsed)):
                history[key].append(float(v))
            epoch_seconds.append(time.time() - te)
            if ckpts is not None:
                ckpts.save(training_state(epoch, model, opt, step=step, best_state=best_state, best_metric=best_map,
                                      best_epoch=best_epoch, history=history, seconds=elapsed))
            frac_done = epoch / s.epochs if not budget else max(epoch / s.epochs, elapsed / budget)
            progress(min(frac_done, 1.0), epoch_message(epoch, s.epochs), epoch=epoch,
                     train_loss=history["train_loss"][-1], val_loss=vl, val_map=vm, best_epoch=best_epoch,
                     seconds=elapsed)
            if progress.stop_requested:
                stopped = True
                break
            if budget and elapsed + float(np.median(epoch_seconds[-3:])) > budget:
                stopped = True
                break
    except BaseException:
        if ckpts is not None:
            ckpts.release()  # an error or Ctrl-C: the checkpoint stays, to resume from
        raise
    if best_state is None:  # stopped before any validation
        best_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    kept_base = base_competes and best_epoch == 0
    seconds = time.time() - t0
    result = val_map(model, val, k, device, s.val_score_thresh)
    metrics = {"val": {"map@0.5": round(result["map"], 4),
                       "ap@0.5_per_class": {classes[c - 1]: round(v, 4) for c, v in result["ap"].items()},
                       "n_images": len(val), "ap_method": "boxap (101-point, COCO-style)"}}
    settings_d = s.to_dict()
    folder = None
    if out_folder is not None:
        fields = dict(card_fields or {})
        training = {"epochs": len(history["train_loss"]), "best_epoch": best_epoch, "seconds": round(seconds, 1),
                    **({"kept_base": kept_base} if base_competes else {}),
                    "stopped_early": stopped, "settings": settings_d, "history": history,
                    "n_train": len(train), "n_val": len(val), **(ckpts.record() if ckpts else {}),
                    **fields.pop("training", {})}
        fields["metrics"] = {**metrics, **fields.get("metrics", {})}
        model.cpu()
        folder = str(save_detector(model, config, out_folder, {**fields, "training": training}))
        if ckpts is not None:
            ckpts.finish()  # registered: the run's checkpoint is no longer needed
        progress(1.0, f"saved {folder} (val mAP@0.5 {result['map']:.3f})", val_map=result["map"])
    return DetTrainResult(folder, len(history["train_loss"]), best_epoch, seconds, history, metrics, stopped,
                          settings_d, kept_base)


def samples_from_split(split) -> list[dict]:
    """The trainer's samples from a :class:`~.data.DetectionSplit` (boxes y0, x0, y1, x1 and
    0-based class ids -> x0, y0, x1, y1 and labels 1..K)."""
    out = []
    for sm in split.samples:
        b = np.asarray(sm.boxes, np.float32).reshape(-1, 4)[:, [1, 0, 3, 2]]
        out.append({"image": sm.image, "boxes": b, "labels": np.asarray(sm.class_ids, np.int64) + 1,
                    "name": sm.name})
    return out
