"""StarDist 2D training in PyTorch: the same network, targets and losses as ``stardist``'s Keras
training, so that the weights load into a ``StarDist2D`` model unchanged.

Why: ``stardist`` trains with TensorFlow, which here runs on the CPU only; PyTorch runs the
same recipe on a GPU when there is one (and on the CPU otherwise). The result is exported in
the Keras layer order (:func:`keras_weights`) and written as a StarDist model folder by
``scripts/export_stardist_torch.py``, so ``stardist`` itself, and the plugin's StarDist backend,
load it like any other StarDist model.

What matches ``stardist`` (0.9, ``Config2D`` with the U-Net backbone):

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
from scipy.ndimage import binary_fill_holes, distance_transform_edt, find_objects

from ...core.axes import InputError
from ...core.io import atomic_write_with
from ..augment import AugmentSettings, augment
from ..settings import TrainSettings, fit_patch, save_training_json
from .train import area_tiles  # numpy only; images larger than two patches -> patch-sized tiles


# ---------------------------------------------------------------------------------- targets
def _grown(sl, shape):
    """The object's bounding box grown by one pixel where it is not at the image edge, and the
    slice that cuts the grown box back to the bounding box."""
    interior = [(s.start > 0, s.stop < n) for s, n in zip(sl, shape)]
    grow = tuple(slice(s.start - int(a), s.stop + int(b)) for s, (a, b) in zip(sl, interior))
    shrink = tuple(slice(int(a), -1 if b else None) for a, b in interior)
    return grow, shrink


def fill_label_holes(lbl: np.ndarray) -> np.ndarray:
    """Fill the holes inside each labelled object (as ``stardist.fill_label_holes``)."""
    out = np.zeros_like(lbl)
    for i, sl in enumerate(find_objects(lbl), 1):
        if sl is None:
            continue
        grow, shrink = _grown(sl, lbl.shape)
        filled = binary_fill_holes(lbl[grow] == i)[shrink]
        out[sl][filled] = i
    return out


def edt_prob(lbl: np.ndarray) -> np.ndarray:
    """Per object: Euclidean distance to the object's boundary divided by its maximum (as
    ``stardist.edt_prob``; the image edge does not count as boundary)."""
    prob = np.zeros(lbl.shape, np.float32)
    if lbl.size and lbl.min() == lbl.max() and lbl.flat[0] > 0:
        return edt_prob(np.pad(lbl, 1))[1:-1, 1:-1]
    for i, sl in enumerate(find_objects(lbl), 1):
        if sl is None:
            continue
        grow, shrink = _grown(sl, lbl.shape)
        grown = lbl[grow] == i
        mask = grown[shrink]
        d = distance_transform_edt(grown)[shrink][mask]
        prob[sl][mask] = d / (d.max() + 1e-10)
    return prob


def star_dist(lbl, n_rays: int = 32, grid: int = 1, max_steps: int | None = None):
    """Star-convex distances of every pixel of a grid, as ``stardist.geometry.star_dist``.

    ``lbl``: torch integer tensor (B, H, W) on any device. Returns (B, n_rays, H//grid, W//grid)
    float32: for each grid pixel (i*grid, j*grid) inside an object, the distance along each ray
    to the object's boundary (0 on the background). Steps of one pixel along the ray in float32,
    stopping at the first pixel of another label or outside the image, with stardist's
    half-pixel correction.
    """
    import torch

    lbl = lbl.to(torch.int32)
    B, H, W = lbl.shape
    dev = lbl.device
    ii = torch.arange(0, H, grid, device=dev)
    jj = torch.arange(0, W, grid, device=dev)
    h, w = len(ii), len(jj)
    value = lbl[:, ii][:, :, jj]  # (B, h, w)
    # angles as stardist: phi_k = k * float32(2 pi / n), row step sin(phi), column step cos(phi)
    st = np.float32(2 * np.pi / n_rays)
    phi = np.array([np.float32(k * st) for k in range(n_rays)], np.float32)
    drow = torch.from_numpy(np.sin(phi).astype(np.float32)).to(dev).view(1, n_rays, 1, 1)
    dcol = torch.from_numpy(np.cos(phi).astype(np.float32)).to(dev).view(1, n_rays, 1, 1)
    corr = torch.from_numpy((1 - 0.5 / np.maximum(np.abs(np.sin(phi)), np.abs(np.cos(phi)))).astype(np.float32))
    corr = corr.to(dev).view(1, n_rays, 1, 1)
    out = torch.zeros((B, n_rays, h, w), dtype=torch.float32, device=dev)
    # One entry per (object pixel, ray); entries whose ray has ended are dropped as it goes.
    bi, ri, ci = torch.nonzero(value > 0, as_tuple=True)
    n = len(bi)
    if n == 0:
        return out
    k = torch.arange(n_rays, device=dev).repeat(n)
    bi, ri, ci = (t.repeat_interleave(n_rays) for t in (bi, ri, ci))
    val = value[bi, ri, ci]
    i0, j0 = ii[ri].to(torch.float32), jj[ci].to(torch.float32)
    dr, dc, cr = drow.view(-1)[k], dcol.view(-1)[k], corr.view(-1)[k]
    flat = lbl.reshape(-1)
    base = bi * (H * W)
    r = torch.zeros(len(k), dtype=torch.float32, device=dev)
    c = torch.zeros_like(r)
    res = torch.zeros_like(r)
    alive = torch.ones(len(k), dtype=torch.bool, device=dev)
    # A ray leaves its object's bounding box within (box diagonal + 1) unit steps. Most rays are
    # short: after 8, 16, 32, ... steps the finished ones are written out and dropped (one GPU
    # sync each), so the long tail of steps runs on few entries.
    steps = min(int(max_steps) if max_steps is not None else H + W, H + W)
    for step in range(1, steps + 1):
        r = r + dr
        c = c + dc
        pr = torch.round(i0 + r).to(torch.int64)
        pc = torch.round(j0 + c).to(torch.int64)
        outside = (pr < 0) | (pr >= H) | (pc < 0) | (pc >= W)
        at = flat[base + pr.clamp(0, H - 1) * W + pc.clamp(0, W - 1)]
        hit = alive & (outside | (at != val))
        res = torch.where(hit, torch.sqrt((r - cr * dr) ** 2 + (c - cr * dc) ** 2), res)
        alive = alive & ~hit
        if step >= 8 and step & (step - 1) == 0 and step < steps:
            done = ~alive
            out[bi[done], k[done], ri[done], ci[done]] = res[done]
            if not bool(alive.any()):
                return out
            bi, ri, ci, k, val, i0, j0, dr, dc, cr, base, r, c, res, alive = (
                t[alive] for t in (bi, ri, ci, k, val, i0, j0, dr, dc, cr, base, r, c, res, alive))
    out[bi, k, ri, ci] = res
    return out


def max_ray_steps(labels: np.ndarray) -> int:
    """Steps that bound every ray of :func:`star_dist` for these (B, H, W) labels: the largest
    object bounding-box diagonal, plus two."""
    longest = 0.0
    for lbl in labels:
        for sl in find_objects(lbl):
            if sl is not None:
                longest = max(longest, math.hypot(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    return int(math.ceil(longest)) + 2


# ---------------------------------------------------------------------------------- network
@dataclass
class TorchStarDistConfig:
    """The ``Config2D`` fields that define the network (names as in ``stardist``)."""
    n_rays: int = 32
    grid: int = 2
    n_channel_in: int = 1
    unet_n_depth: int = 3
    unet_n_filter_base: int = 32
    unet_n_conv_per_depth: int = 2
    unet_kernel_size: int = 3
    net_conv_after_unet: int = 128

    def config2d_kwargs(self) -> dict:
        k = self.unet_kernel_size
        return dict(n_rays=self.n_rays, grid=(self.grid, self.grid), n_channel_in=self.n_channel_in,
                    unet_n_depth=self.unet_n_depth, unet_n_filter_base=self.unet_n_filter_base,
                    unet_n_conv_per_depth=self.unet_n_conv_per_depth, unet_kernel_size=(k, k),
                    net_conv_after_unet=self.net_conv_after_unet)


def build_network(cfg: TorchStarDistConfig):
    """The StarDist 2D U-Net as a torch module; ``forward`` returns (prob logits, distances)."""
    import torch
    from torch import nn

    if cfg.grid not in (1, 2, 4, 8):
        raise ValueError(f"grid must be a power of two, got {cfg.grid}")
    k = cfg.unet_kernel_size
    base, depth, nconv = cfg.unet_n_filter_base, cfg.unet_n_depth, cfg.unet_n_conv_per_depth

    def conv(cin, cout, size=k):
        return nn.Conv2d(cin, cout, size, padding=size // 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # The order of creation is the Keras layer order (see keras_weights).
            self.pool_convs = nn.ModuleList()
            cin = cfg.n_channel_in
            g = 1
            while g < cfg.grid:
                for _ in range(nconv):
                    self.pool_convs.append(conv(cin, base))
                    cin = base
                g *= 2
            self.down = nn.ModuleList()
            skips = []
            for n in range(depth):
                level = nn.ModuleList()
                for _ in range(nconv):
                    level.append(conv(cin, base * 2 ** n))
                    cin = base * 2 ** n
                skips.append(cin)
                self.down.append(level)
            self.middle = nn.ModuleList()
            for _ in range(nconv - 1):
                self.middle.append(conv(cin, base * 2 ** depth))
                cin = base * 2 ** depth
            self.middle.append(conv(cin, base * 2 ** max(0, depth - 1)))
            cin = base * 2 ** max(0, depth - 1)
            self.up = nn.ModuleList()
            for n in reversed(range(depth)):
                level = nn.ModuleList()
                cin = cin + skips[n]
                for _ in range(nconv - 1):
                    level.append(conv(cin, base * 2 ** n))
                    cin = base * 2 ** n
                level.append(conv(cin, base * 2 ** max(0, n - 1)))
                cin = base * 2 ** max(0, n - 1)
                self.up.append(level)
            self.features = conv(cin, cfg.net_conv_after_unet) if cfg.net_conv_after_unet > 0 else None
            cin = cfg.net_conv_after_unet if cfg.net_conv_after_unet > 0 else cin
            self.prob = conv(cin, 1, 1)
            self.dist = conv(cin, cfg.n_rays, 1)
            for m in self.modules():  # Keras' defaults: Glorot-uniform kernels, zero biases
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            relu, pool = torch.relu, nn.functional.max_pool2d
            i = 0
            g = 1
            while g < cfg.grid:
                for _ in range(nconv):
                    x = relu(self.pool_convs[i](x))
                    i += 1
                x = pool(x, 2)
                g *= 2
            skips = []
            for level in self.down:
                for c in level:
                    x = relu(c(x))
                skips.append(x)
                x = pool(x, 2)
            for c in self.middle:
                x = relu(c(x))
            for level, skip in zip(self.up, reversed(skips)):
                x = torch.cat([nn.functional.interpolate(x, scale_factor=2, mode="nearest"), skip], 1)
                for c in level:
                    x = relu(c(x))
            if self.features is not None:
                x = relu(self.features(x))
            return self.prob(x), self.dist(x)

    return Net()


def _convs_in_keras_order(net):
    from torch import nn

    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def keras_weights(net) -> list[np.ndarray]:
    """The network's weights as ``keras_model.get_weights()`` lists them (kernel HWIO, bias)."""
    out = []
    for c in _convs_in_keras_order(net):
        out.append(c.weight.detach().float().cpu().numpy().transpose(2, 3, 1, 0).copy())
        out.append(c.bias.detach().float().cpu().numpy().copy())
    return out


def load_keras_weights(net, weights: list[np.ndarray]) -> None:
    """Set the network's weights from a ``keras_model.get_weights()`` list."""
    import torch

    convs = _convs_in_keras_order(net)
    if len(weights) != 2 * len(convs):
        raise ValueError(f"expected {2 * len(convs)} arrays, got {len(weights)}: not this architecture")
    with torch.no_grad():
        for c, kern, bias in zip(convs, weights[0::2], weights[1::2]):
            kern = np.asarray(kern).transpose(3, 2, 0, 1)
            if kern.shape != tuple(c.weight.shape) or np.shape(bias) != tuple(c.bias.shape):
                raise ValueError(f"weight shape {kern.shape} does not fit layer {tuple(c.weight.shape)}")
            c.weight.copy_(torch.from_numpy(np.ascontiguousarray(kern)))
            c.bias.copy_(torch.from_numpy(np.asarray(bias)))


def stardist_loss(prob_logit, dist_pred, prob_true, dist_true, background_reg=1e-4, weights=(1.0, 0.2)):
    """stardist's training loss (see the module docstring); returns (total, prob part, dist part)."""
    import torch

    prob_loss = torch.nn.functional.binary_cross_entropy_with_logits(prob_logit, prob_true)
    mask = prob_true
    per_px = (mask * (dist_true - dist_pred).abs()).mean(1, keepdim=True)
    dist_loss = per_px.mean() / (mask.mean() + 1e-7)
    if background_reg > 0:
        dist_loss = dist_loss + background_reg * ((1 - mask) * dist_pred.abs()).mean()
    return weights[0] * prob_loss + weights[1] * dist_loss, prob_loss, dist_loss


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
