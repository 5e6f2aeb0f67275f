"""The U-Net architecture: encoder–decoder with skip connections, 3-class output.

Every level has two 3x3 convolutions (+ batch norm) + ReLU; the encoder halves the
resolution with 2x2 max pooling, the decoder doubles it with the configured
upsampling, concatenates the encoder features of the same level (skip connection) and
applies two more 3x3 convolutions. A final 1x1 convolution gives ``n_classes`` logits
(background / interior / boundary).

Upsampling and checkerboard artefacts
-------------------------------------
``"transposed"`` uses ``ConvTranspose2d(kernel_size=2, stride=2)``: every output pixel
receives exactly one kernel tap, chosen by its position modulo 2, so even a constant
input becomes a period-2 ("checkerboard") pattern unless the network learns four
identical taps. ``"nearest"`` and ``"bilinear"`` first resample (no learned weights, a
constant stays constant) and then apply an ordinary 3x3 convolution, which has no
such periodic structure. ``"bilinear"`` is therefore the default; ``"transposed"`` is
offered for comparison (see ``benchmarks/bench_unet_upsampling.py`` and
:func:`checkerboard_energy`).

``"unpool"`` is SegNet's "bed of nails" decoder: the encoder's max pooling also returns
the position of each 2x2 window's maximum, and the decoder (after a 1x1 convolution that
brings the channels to the skip level's) puts every value back at exactly that position
(``MaxUnpool2d``), zeros elsewhere, then a 3x3 convolution fills the sparse map in. The
positions follow the image's maxima instead of a fixed stamp; on flat regions (ties, where
pooling picks each window's first pixel) the nails do form a regular period-2 grid.

The height and width of the input must be multiples of ``2 ** depth``; the predictor
pads images (the module itself never pads, so tiles stay aligned to the pooling grid).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from .options import UPSAMPLING  # noqa: F401  (re-exported)
CLASS_NAMES = ("background", "interior", "boundary")


@dataclass
class UNetConfig:
    in_channels: int = 1
    n_classes: int = 3
    depth: int = 3
    base_filters: int = 16
    upsampling: str = "bilinear"
    batch_norm: bool = True

    def __post_init__(self):
        for name in ("in_channels", "n_classes", "depth", "base_filters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"U-Net config: {name} must be a positive integer, not {v!r}")
            setattr(self, name, int(v))
        if self.depth > 6:
            raise ValueError(f"U-Net config: depth must be 1..6, not {self.depth}")
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"U-Net config: upsampling must be one of {UPSAMPLING}, not {self.upsampling!r}")
        if not isinstance(self.batch_norm, (bool, np.bool_)):
            raise ValueError(f"U-Net config: batch_norm must be true or false, not {self.batch_norm!r}")
        self.batch_norm = bool(self.batch_norm)

    @property
    def multiple(self) -> int:
        """Height and width of the network's input must be multiples of this."""
        return 2 ** self.depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from a dict (unknown keys are ignored); bad values raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"U-Net config must be a JSON object, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, mode: str, batch_norm: bool):
        super().__init__()
        self.mode = mode
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        elif mode == "unpool":
            # the pooling indices belong to the skip level's c_out channels: match them first
            self.reduce = nn.Conv2d(c_in, c_out, 1)
            self.unpool = nn.MaxUnpool2d(2)
            self.fill = nn.Conv2d(c_out, c_out, 3, padding=1)
        else:
            extra = {"align_corners": False} if mode == "bilinear" else {}
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode, **extra),
                                    nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv = _conv_block(2 * c_out, c_out, batch_norm)

    def forward(self, x, skip, indices=None):
        if self.mode == "unpool":
            x = self.fill(_unpool(self.unpool, self.reduce(x), indices, skip))
        else:
            x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


def _unpool(unpool: nn.MaxUnpool2d, x, indices, like):
    """Bed of nails: ``x``'s values at the pooling ``indices`` of a map shaped like ``like``, zeros elsewhere.

    ``nn.MaxUnpool2d`` cannot be traced (its output-size check fails on traced sizes), so the
    TorchScript export (``torch.jit.trace``) gets the same operation as a scatter into zeros:
    ``MaxPool2d``'s indices are flat positions in each (sample, channel) plane.
    """
    if torch.jit.is_tracing():
        return torch.zeros_like(like).flatten(2).scatter(2, indices.flatten(2), x.flatten(2)).view_as(like)
    return unpool(x, indices, output_size=like.shape[-2:])


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        d, bn = config.depth, config.batch_norm
        f = [config.base_filters * 2 ** i for i in range(d + 1)]
        self.down = nn.ModuleList(
            [_conv_block(config.in_channels if i == 0 else f[i - 1], f[i], bn) for i in range(d)])
        self.with_indices = config.upsampling == "unpool"  # the decoder needs the encoder's argmax positions
        self.pool = nn.MaxPool2d(2, return_indices=self.with_indices)
        self.bottom = _conv_block(f[d - 1], f[d], bn)
        self.up = nn.ModuleList([_Up(f[i + 1], f[i], config.upsampling, bn) for i in reversed(range(d))])
        self.head = nn.Conv2d(f[0], config.n_classes, 1)

    def forward(self, x):
        m = self.config.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"U-Net input height and width must be multiples of {m}, got {tuple(x.shape[-2:])}")
        skips, indices = [], []
        for block in self.down:
            x = block(x)
            skips.append(x)
            if self.with_indices:
                x, idx = self.pool(x)
                indices.append(idx)
            else:
                x = self.pool(x)
                indices.append(None)
        x = self.bottom(x)
        for up, skip, idx in zip(self.up, reversed(skips), reversed(indices)):
            x = up(x, skip, idx)
        return self.head(x)


def build_unet(config: UNetConfig | None = None) -> UNet:
    """A freshly initialised U-Net for ``config`` (default :class:`UNetConfig`)."""
    return UNet(config or UNetConfig())


def _nyquist_power(x, crop: int):
    a = np.asarray(x, np.float64)
    if crop:
        a = a[..., crop:-crop, crop:-crop]
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    if h < 2 or w < 2:
        raise ValueError(f"need at least 2x2 pixels after cropping, got {a.shape[-2:]}")
    a = a[..., :h, :w]
    p = np.abs(np.fft.fft2(a, axes=(-2, -1))) ** 2
    total = float(p.sum())
    dc = float(p[..., 0, 0].sum())
    nyq = float(p[..., h // 2, 0].sum() + p[..., 0, w // 2].sum() + p[..., h // 2, w // 2].sum())
    return nyq, total - dc, total


def checkerboard_energy(x, crop: int = 0, rel_floor: float = 1e-12) -> float:
    """Share of the spatial variation of ``x`` (``(..., H, W)``) that is a period-2 pattern.

    The pattern a stride-2 transposed convolution stamps on its output has all its power
    at the Nyquist frequencies (1/2, 0), (0, 1/2) and (1/2, 1/2) cycles/pixel; smooth
    images and smooth network outputs have almost none there. Returns the Nyquist power
    divided by the power without the mean (0..1); an output that is constant up to
    rounding (variation below ``rel_floor`` of its total power) has no pattern: 0.
    ``crop`` pixels are dropped at each border first (zero-padding effects).
    """
    nyq, ac, total = _nyquist_power(x, crop)
    if total <= 0 or ac <= rel_floor * total:
        return 0.0
    return nyq / ac


def checkerboard_amplitude(x, crop: int = 0) -> float:
    """RMS of the period-2 component of ``x`` relative to the RMS of ``x`` (0..1)."""
    nyq, _, total = _nyquist_power(x, crop)
    return float(np.sqrt(nyq / total)) if total > 0 else 0.0
