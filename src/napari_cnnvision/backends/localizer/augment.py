"""The localizer's own batched augmentation (:func:`augment_batch`), used by :mod:`.train`.

PyTorch is imported inside the function.
"""
from __future__ import annotations

import numpy as np

from .settings import LocalizerAugment, LocalizerTrainSettings


def augment_batch(x, boxes, rng: np.random.Generator, settings: LocalizerTrainSettings | LocalizerAugment):
    """Random flips / 90° turns, zoom + shift and intensity jitter of a batch ``(n, c, h, w)``
    with its normalized ``cx, cy, w, h`` boxes, transformed alike (torch tensors in and out).

    The localizer's own augmentation, batched in torch; the shared :mod:`..augment` is not used
    here because the shipped ``wbc-localizer`` was trained with this one (kept as it is)."""
    import torch
    from torch.nn import functional as F

    if isinstance(settings, LocalizerTrainSettings):
        settings = settings.augment

    n, c, h, w = x.shape
    x = x.clone()
    b = boxes.clone()
    turns = h == w and settings.turns
    for i in range(n):
        k = int(rng.integers(8 if turns else 4))
        if k & 4:
            x[i] = x[i].transpose(1, 2).clone()
            b[i] = b[i][[1, 0, 3, 2]].clone()
        if k & 1:
            x[i] = x[i].flip(2).clone()
            b[i, 0] = 1 - b[i, 0]
        if k & 2:
            x[i] = x[i].flip(1).clone()
            b[i, 1] = 1 - b[i, 1]
    if settings.zoom > 0 or settings.shift > 0:
        s = 1.0 / (1.0 + rng.uniform(-settings.zoom, settings.zoom, n))  # < 1: zoom in
        t = rng.uniform(-settings.shift, settings.shift, (n, 2))
        nb = b.numpy().astype(np.float64).copy()
        for i in range(n):
            c_m1 = 2 * nb[i, :2] - 1
            centre = ((c_m1 - t[i]) / s[i] + 1) / 2
            size = nb[i, 2:] / s[i]
            lo, hi = np.clip(centre - size / 2, 0, 1), np.clip(centre + size / 2, 0, 1)
            full = size.prod()
            if full <= 0 or (hi - lo).prod() < 0.6 * min(full, 1.0):  # object mostly pushed out: no zoom/shift
                s[i], t[i] = 1.0, 0.0
                continue
            nb[i] = np.concatenate([(lo + hi) / 2, hi - lo])
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.from_numpy(s).float()
        theta[:, 1, 1] = torch.from_numpy(s).float()
        theta[:, :, 2] = torch.from_numpy(t).float()
        grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        b = torch.from_numpy(nb).float()
    if settings.intensity > 0:
        a = settings.intensity
        gain = torch.from_numpy(1 + rng.uniform(-a, a, (n, 1, 1, 1))).float()
        gain = gain * torch.from_numpy(1 + rng.uniform(-a / 3, a / 3, (n, c, 1, 1))).float()
        offset = torch.from_numpy(rng.uniform(-a, a, (n, 1, 1, 1))).float()
        x = x * gain + offset
    return x, b
