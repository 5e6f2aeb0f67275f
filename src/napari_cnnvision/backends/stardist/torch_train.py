"""StarDist 2D training in PyTorch: the same network, targets and losses as ``stardist``'s Keras
training, so that the weights load into a ``StarDist2D`` model unchanged.

Why: ``stardist`` trains with TensorFlow, which here runs on the CPU only; PyTorch runs the
same recipe on a GPU when there is one (and on the CPU otherwise). The result is exported in
the Keras layer order (:func:`keras_weights`) and written as a StarDist model folder by
``scripts/export_stardist_torch.py``, so ``stardist`` itself, and the plugin's StarDist backend,
load it like any other StarDist model.

What matches ``stardist`` (0.9, ``Config2D`` with the U-Net backbone; the network and the loss are
in :mod:`.torch_network`, the targets in :mod:`.targets`):

- network: ``grid`` pooling convs, csbdeep's ``unet_block`` (``n_conv_per_depth`` convs per
  level, max-pooling, nearest upsampling, concatenation ``[upsampled, skip]``), a 3x3
  ``features`` conv, 1x1 ``prob`` (sigmoid) and ``dist`` (linear) heads; 'same' padding.
- targets, computed per training patch after augmentation, as ``StarDistData2D`` does:
  ``prob = edt_prob(label[::g, ::g])`` and ``dist = star_dist(label, n_rays, grid)``.
- losses: binary cross-entropy on ``prob``; on ``dist`` the mean absolute error weighted by the
  ``prob`` target, normalised by its mean, plus ``background_reg`` x the mean ``|dist|`` on the
  background; total ``1 * prob + 0.2 * dist``.

Only numpy and scipy are imported at module level; ``torch`` inside the functions that need it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.axes import InputError
from ...core.io import atomic_write_with
from ..augment import AugmentSettings, augment
from ..settings import TrainSettings, fit_patch, save_training_json
from .torch_network import (TorchStarDistConfig, build_network, keras_weights,  # noqa: F401
                            load_keras_weights, stardist_loss)
from .targets import edt_prob, fill_label_holes, max_ray_steps, star_dist  # noqa: F401  (also this module's API)
from .train import area_tiles  # numpy only; images larger than two patches -> patch-sized tiles


# ---------------------------------------------------------------------------------- data
class PatchSampler:
    """Random training patches as ``StarDistData2D`` draws them, with the recipe's augmentation.

    Each draw: a random (tile of an) image, a random patch position (with probability
    ``foreground_prob`` one whose patch holds an object), then
    :func:`~napari_cnnvision.backends.augment.augment` (by default a random 90° turn and flip
    and an intensity jitter ``x * U(0.6, 1.4) + U(-0.2, 0.2)``). Returns the image patch
    (float32), the label patch (int32) and ``edt_prob`` of the label subsampled by ``grid``.
    """

    def __init__(self, images, masks, patch: int, grid: int, foreground_prob: float = 0.9, seed: int = 0,
                 augment: AugmentSettings | None = None):
        self.images, self.masks = images, masks
        self.patch, self.grid, self.fg = patch, grid, foreground_prob
        self.augment = augment or AugmentSettings()
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def draw(self):
        rng, p = self.rng, self.patch
        k = int(rng.integers(len(self.images)))
        x, y = self.images[k], self.masks[k]
        H, W = y.shape
        want_fg = rng.random() < self.fg and y.any()
        for _ in range(50):
            r0 = int(rng.integers(H - p + 1))
            c0 = int(rng.integers(W - p + 1))
            yp = y[r0:r0 + p, c0:c0 + p]
            if not want_fg or yp.any():
                break
        out = augment(rng, x[r0:r0 + p, c0:c0 + p], yp, settings=self.augment)
        yp = np.ascontiguousarray(out.labels, dtype=np.int32)
        prob = edt_prob(yp[::self.grid, ::self.grid])
        return np.ascontiguousarray(out.image, dtype=np.float32), yp, prob

    def batch(self, n):
        xs, ys, ps = zip(*(self.draw() for _ in range(n)))
        ys = np.stack(ys)
        return np.stack(xs), ys, np.stack(ps), max_ray_steps(ys)


def _batches(images, masks, patch, grid, batch, seed, workers, augment_settings=None):
    """An endless iterator of batches, drawn in ``workers`` processes (torch's DataLoader)."""
    import torch

    sampler = PatchSampler(images, masks, patch, grid, seed=seed, augment=augment_settings)

    class _DS(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            sampler.reseed(seed * 1000 + (info.id if info else 0))
            while True:
                yield sampler.batch(batch)

    loader = torch.utils.data.DataLoader(_DS(), batch_size=None, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return iter(loader)


# ---------------------------------------------------------------------------------- training
@dataclass
class TorchTrainSettings(TrainSettings):
    """Settings of :func:`train_torch`; it counts optimizer ``steps`` (no epochs)."""

    net: TorchStarDistConfig = field(default_factory=TorchStarDistConfig)
    #: side of the square training patches
    patch_size: int = 256
    batch_size: int = 16
    steps: int = 20000
    #: stop after this many seconds even if ``steps`` are not done; the learning-rate schedule
    #: then follows the elapsed fraction of the time (whichever of steps and time is further)
    time_budget: float | None = None
    learning_rate: float = 5e-4
    #: steps of linear learning-rate warm-up (then a cosine decay)
    warmup: int = 200
    ema: float = 0.999
    background_reg: float = 1e-4
    area_sampling: bool = True
    #: fractions of training at which the EMA weights are saved as checkpoints
    save_at: tuple[float, ...] = (0.5, 1.0)
    #: DataLoader processes drawing the training patches (0: in this process)
    workers: int = 4
    #: bfloat16 autocast on a GPU (off: float32 with TF32 matrix maths)
    bf16: bool = False
    log_every: int = 500
    #: val patches (fixed, unaugmented) for the logged val loss
    n_val_patches: int = 64

    label = "PyTorch StarDist training settings"
    aliases = {"patch": "patch_size", "batch": "batch_size", "lr": "learning_rate"}

    def pooling(self) -> tuple[int, int]:
        m = int(self.net.grid) * 2 ** int(self.net.unet_n_depth)
        return (m, m)

    def validate(self) -> None:
        n = self.net
        if not isinstance(n, TorchStarDistConfig):
            self._fail(f"net must be a TorchStarDistConfig, got {n!r}")
        if n.grid not in (1, 2, 4, 8) or isinstance(n.grid, bool):
            self._fail(f"net.grid must be 1, 2, 4 or 8, got {n.grid!r}")
        for name in ("n_rays", "n_channel_in", "unet_n_depth", "unet_n_filter_base", "unet_n_conv_per_depth"):
            v = getattr(n, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (3 if name == "n_rays" else 1):
                self._fail(f"net.{name} must be a whole number >= {3 if name == 'n_rays' else 1}, got {v!r}")
        super().validate()
        if self.patch_shape[0] != self.patch_shape[1]:
            self._fail(f"patch_size: square patches only (one side), got {self.patch_size!r}")
        self._int("steps")
        self._int("warmup", 0)
        self._int("workers", 0)
        self._int("log_every")
        self._int("n_val_patches")
        self._positive("background_reg", allow_zero=True)
        if self.time_budget is not None:
            self._positive("time_budget")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            self._fail(f"ema must lie in 0..1 (exclusive of 1), got {self.ema!r}")
        if not self.save_at or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in self.save_at) \
                or list(self.save_at) != sorted(self.save_at):
            self._fail(f"save_at must be increasing fractions in (0, 1], got {self.save_at!r}")


def save_checkpoint(path: Path, weights: list[np.ndarray], meta: dict) -> None:
    """Keras-ordered weights + metadata in one ``.npz`` (plain arrays, loaded with allow_pickle=False).

    Written atomically: a failed save leaves no temp file, and an earlier checkpoint of that
    name stays whole."""
    arrays = {f"w{i:03d}": w for i, w in enumerate(weights)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    atomic_write_with(Path(path), lambda tmp: np.savez(tmp, **arrays))  # tmp ends in .npz: kept as is


def load_checkpoint(path) -> tuple[list[np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as z:
        names = sorted(n for n in z.files if n.startswith("w"))
        return [z[n] for n in names], json.loads(bytes(z["meta"]).decode())


def train_torch(images, masks, val_images, val_masks, out_dir, settings: TorchTrainSettings,
                init_weights: list[np.ndarray] | None = None, log=print):
    """Train on (images, masks); write EMA checkpoints ``ckpt_<percent>.npz`` into ``out_dir``.

    Logs the training loss and the loss on a fixed set of val patches every few hundred steps.
    ``out_dir/training.json`` holds the settings (from the start) and the checkpoints saved so far.
    Returns the list of checkpoint paths.
    """
    s = settings
    s.validate()
    if not images or not val_images:
        raise InputError("training needs training and validation images")
    if len(images) != len(masks) or len(val_images) != len(val_masks):
        raise InputError("every image needs exactly one mask")

    import torch

    from ...core.normalize import percentile_normalize

    torch.manual_seed(s.seed)
    np.random.seed(s.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    X = [percentile_normalize(x, s.pmin, s.pmax) for x in images]
    Y = [fill_label_holes(m.astype(np.int32)) for m in masks]
    Xv = [percentile_normalize(x, s.pmin, s.pmax) for x in val_images]
    Yv = [fill_label_holes(m.astype(np.int32)) for m in val_masks]
    min_hw = min(min(x.shape[:2]) for x in X + Xv)
    patch = fit_patch(s.patch_shape, min_hw, s.pooling())[0]
    if s.area_sampling:
        X, Y = area_tiles(X, Y, (patch, patch))
    g = s.net.grid

    # a fixed set of val patches for the logged val loss (no augmentation)
    rng = np.random.default_rng(12345)
    vsx, vsy, vsp = [], [], []
    for _ in range(s.n_val_patches):
        k = int(rng.integers(len(Xv)))
        x, y = Xv[k], Yv[k]
        r0 = int(rng.integers(y.shape[0] - patch + 1))
        c0 = int(rng.integers(y.shape[1] - patch + 1))
        yp = np.ascontiguousarray(y[r0:r0 + patch, c0:c0 + patch], dtype=np.int32)
        vsx.append(x[r0:r0 + patch, c0:c0 + patch])
        vsy.append(yp)
        vsp.append(edt_prob(yp[::g, ::g]))
    vx = torch.from_numpy(np.stack(vsx)[:, None].astype(np.float32)).to(dev)
    vp = torch.from_numpy(np.stack(vsp)[:, None]).to(dev)
    vd = star_dist(torch.from_numpy(np.stack(vsy)).to(dev), s.net.n_rays, g, max_steps=max_ray_steps(np.stack(vsy)))

    net = build_network(s.net).to(dev)
    if init_weights is not None:
        load_keras_weights(net, init_weights)
    ema = build_network(s.net).to(dev)
    ema.load_state_dict(net.state_dict())
    for q in ema.parameters():
        q.requires_grad_(False)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=s.learning_rate)
    batches = _batches(X, Y, patch, g, s.batch_size, s.seed, s.workers, s.augment)
    use_bf16 = s.bf16 and dev.type == "cuda"

    def val_loss(model):
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, torch.bfloat16, enabled=use_bf16):
            tot = []
            for i in range(0, len(vx), 16):
                pl, dp = model(vx[i:i + 16])
                tot.append(stardist_loss(pl.float(), dp.float(), vp[i:i + 16], vd[i:i + 16],
                                         s.background_reg)[0].item())
        model.train()
        return float(np.mean(tot))

    t0 = time.time()
    saved, next_save = [], list(s.save_at)
    step, run_loss = 0, []
    device = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    meta_base = {"settings": s.to_dict(), "config2d": s.net.config2d_kwargs(), "patch": patch,
                 "n_train_items": len(X), "device": device}
    record = {"framework": "pytorch", "config2d": meta_base["config2d"], "patch": patch, "device": device,
              "init_weights": init_weights is not None, "checkpoints": []}
    save_training_json(out_dir, s, **record)
    while True:
        frac = step / s.steps
        if s.time_budget:
            frac = max(frac, (time.time() - t0) / s.time_budget)
        while next_save and frac >= next_save[0] - 1e-9:
            pct = int(round(next_save.pop(0) * 100))
            p = out_dir / f"ckpt_{pct:03d}.npz"
            meta = {"step": step, "seconds": round(time.time() - t0, 1), "fraction": pct / 100,
                    "val_loss_ema": val_loss(ema), "weights": "exponential moving average"}
            save_checkpoint(p, keras_weights(ema), meta_base | meta)
            saved.append(p)
            record["checkpoints"].append({"file": p.name, **meta})
            save_training_json(out_dir, s, **record)
            log(f"saved {p.name} at step {step}")
        if frac >= 1.0:
            break
        lr = s.learning_rate * min(1.0, (step + 1) / max(1, s.warmup)) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        xb, yb, pb, nsteps = next(batches)
        # (the DataLoader hands numpy batches over as tensors)
        xb = torch.as_tensor(xb)[:, None].to(dev, non_blocking=True)
        yb = torch.as_tensor(yb).to(dev, non_blocking=True)
        pb = torch.as_tensor(pb)[:, None].to(dev, non_blocking=True)
        db = star_dist(yb, s.net.n_rays, g, max_steps=int(nsteps))
        if dev.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, torch.bfloat16, enabled=use_bf16):
            pl, dp = net(xb)
        loss = stardist_loss(pl.float(), dp.float(), pb, db, s.background_reg)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            d = min(s.ema, (1 + step) / (10 + step))
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(pn.detach(), alpha=1 - d)
        if step % 10 == 0:
            run_loss.append(loss.item())
        step += 1
        if step % s.log_every == 0:
            log(f"step {step} {time.time() - t0:.0f}s lr {lr:.2e} loss {np.mean(run_loss[-50:]):.4f} "
                f"val {val_loss(net):.4f} val_ema {val_loss(ema):.4f}")
    return saved
