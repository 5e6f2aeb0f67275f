"""The StarDist 2D network in PyTorch (``Config2D`` with the U-Net backbone, as ``stardist`` builds
it in Keras), its weights in the Keras layer order, and StarDist's training loss, for
:mod:`.torch_train`. ``torch`` is imported inside the functions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
