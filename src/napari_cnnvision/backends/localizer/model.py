"""The single-object localizer network: a compact CNN backbone with a class head and a box head.

The backbone is a stack of conv-BN-SiLU stages, each halving the resolution. Its last feature
map feeds two heads:

* an **attention map** (one channel, softmax over positions) whose expected position is the box
  centre (a soft arg-max, refined by a small learned offset) and which pools the features of the
  object for the other two outputs;
* the **class head**: the attention-pooled and the globally pooled features -> a linear layer
  -> class logits (trained with cross-entropy);
* the **box head**: the pooled features -> ``(w, h)`` through a sigmoid; with the centre this
  gives the box as ``(cx, cy, w, h)`` in 0..1 of the input (trained with an L2 / MSE loss).

Like torchvision's detection models, ``forward(images, targets)`` in train mode returns the
losses ``{"loss_class", "loss_box"}`` and in eval mode the predictions
``{"boxes": (n, 4) cx, cy, w, h in 0..1, "logits": (n, n_classes), "probabilities"}``.
Total training loss = ``loss_class + box_weight * loss_box`` (``box_weight`` = λ, a
hyper-parameter of the training recipe, recorded in the card).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LocalizerConfig:
    n_classes: int
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)  # (height, width) the image is resized to
    widths: tuple[int, ...] = (16, 24, 48, 64, 96, 128)  # stem, then one stage each (stride 2 each)
    convs_per_stage: int = 2
    dropout: float = 0.2

    def __post_init__(self):
        self.input_size = tuple(int(s) for s in self.input_size)
        self.widths = tuple(int(w) for w in self.widths)
        if self.n_classes < 1:
            raise ValueError("a localizer needs at least one class")
        if len(self.input_size) != 2 or min(self.input_size) < 2 ** len(self.widths):
            raise ValueError(f"input_size {self.input_size} is too small for {len(self.widths)} stride-2 stages")
        if len(self.widths) < 2 or min(self.widths) < 1 or self.convs_per_stage < 1:
            raise ValueError("widths needs >= 2 positive entries and convs_per_stage >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must lie in 0..1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LocalizerConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown localizer config keys {sorted(unknown)}")
        return cls(**d)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class Localizer(nn.Module):
    """See the module docstring."""

    def __init__(self, config: LocalizerConfig):
        super().__init__()
        self.config = config
        w = config.widths
        layers = [_conv_bn(config.in_channels, w[0], 2)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers.append(_conv_bn(cin, cout, 2))
            layers += [_conv_bn(cout, cout) for _ in range(config.convs_per_stage - 1)]
        self.backbone = nn.Sequential(*layers)
        c = w[-1]
        self.attention = nn.Conv2d(c, 1, 1)
        self.dropout = nn.Dropout(config.dropout)
        self.class_head = nn.Linear(2 * c, config.n_classes)
        self.box_head = nn.Sequential(nn.Linear(2 * c, 64), nn.SiLU(inplace=True), nn.Linear(64, 4))
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)

    def _outputs(self, images: torch.Tensor):
        f = self.backbone(images)
        n, c, h, w = f.shape
        att = torch.softmax(self.attention(f).flatten(1), dim=1)  # (n, h*w)
        ys = (torch.arange(h, device=f.device, dtype=f.dtype) + 0.5) / h
        xs = (torch.arange(w, device=f.device, dtype=f.dtype) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        cx = (att * gx.flatten()).sum(1)
        cy = (att * gy.flatten()).sum(1)
        flat = f.flatten(2)  # (n, c, h*w)
        pooled = torch.cat([(flat * att[:, None]).sum(2), flat.mean(2)], 1)
        pooled = self.dropout(pooled)
        logits = self.class_head(pooled)
        b = self.box_head(pooled)
        cx = (cx + 0.25 * torch.tanh(b[:, 0]) / w).clamp(0, 1)
        cy = (cy + 0.25 * torch.tanh(b[:, 1]) / h).clamp(0, 1)
        wh = torch.sigmoid(b[:, 2:] - 1.0)
        return logits, torch.stack([cx, cy, wh[:, 0], wh[:, 1]], 1)

    def forward(self, images: torch.Tensor, targets: dict | None = None, class_weights: torch.Tensor | None = None,
                label_smoothing: float = 0.0):
        """Train mode with ``targets`` (``{"labels": (n,), "boxes": (n, 4) cx, cy, w, h in 0..1}``):
        the losses; eval mode: the predictions (see the module docstring)."""
        logits, boxes = self._outputs(images)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the localizer needs targets (labels and boxes)")
            loss_class = F.cross_entropy(logits, targets["labels"], weight=class_weights,
                                         label_smoothing=label_smoothing)
            loss_box = F.mse_loss(boxes, targets["boxes"])
            return {"loss_class": loss_class, "loss_box": loss_box}
        return {"boxes": boxes, "logits": logits, "probabilities": torch.softmax(logits, 1)}


def build_localizer(config: LocalizerConfig) -> Localizer:
    return Localizer(config)


# --- box conversions (normalized cx, cy, w, h <-> pixel y0, x0, y1, x1) ---------------------------------

def cxcywh_to_yxyx(b, height: float, width: float):
    """``(n, 4)`` normalized (cx, cy, w, h) -> pixel (y0, x0, y1, x1) of an ``height`` x ``width`` image."""
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    out = [(cy - h / 2) * height, (cx - w / 2) * width, (cy + h / 2) * height, (cx + w / 2) * width]
    if isinstance(b, torch.Tensor):
        return torch.stack(out, 1)
    import numpy as np

    return np.stack(out, 1)


def yxyx_to_cxcywh(b, height: float, width: float):
    """Pixel (y0, x0, y1, x1) -> normalized (cx, cy, w, h)."""
    y0, x0, y1, x1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    out = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
    if isinstance(b, torch.Tensor):
        return torch.stack(out, 1)
    import numpy as np

    return np.stack(out, 1)


__all__ = ["LocalizerConfig", "Localizer", "build_localizer", "cxcywh_to_yxyx", "yxyx_to_cxcywh"]
