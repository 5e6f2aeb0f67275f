"""Test-time augmentation (TTA) for StarDist 2D: average the network's output over flips and 90° turns.

The image is flipped / transposed, the network runs on each version, and each output is mapped back
to the original frame before averaging: the probability map is simply flipped back, the distance
map is flipped back *and* its rays are re-indexed (a ray pointing right points left in a mirrored
image). Non-maximum suppression then runs once on the averaged output.

Two details make the averaged output line up exactly with the plain one:

* StarDist predicts on a grid (e.g. every 2nd pixel). Mirroring an axis of even length would
  move the grid points by one pixel, so before flipping the axis is padded (by reflection) to a
  length ``S`` with ``(S - 1) % grid == 0``; then grid points land on grid points.
* Transposing is used only when both grid steps are equal, and a transform is used only when it
  maps the set of ray directions onto itself.

The flips themselves are in ``backends/dihedral.py``. Pure numpy; the network is passed in as a
function, so this module is testable without TensorFlow.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..dihedral import ALL, Transform, backward, forward

Predict = Callable[[np.ndarray, Transform], "tuple[np.ndarray, np.ndarray]"]  # (image, its transform)


def ray_permutation(t: Transform, n_rays: int) -> np.ndarray | None:
    """``perm`` with ``dist_original[..., k] = dist_transformed_back[..., perm[k]]``; None if the rays don't map."""
    phi = 2 * np.pi * np.arange(n_rays) / n_rays  # StarDist's rays: (dy, dx) = dist * (sin phi, cos phi)
    dy, dx = t.direction(np.sin(phi), np.cos(phi))
    target = np.arctan2(dy, dx) % (2 * np.pi) / (2 * np.pi) * n_rays
    perm = np.rint(target).astype(int) % n_rays
    if not np.allclose(target, np.rint(target), atol=1e-6):
        return None
    return perm


def transforms_for(grid: tuple[int, int], n_rays: int) -> list[Transform]:
    """The flips/transposes that are exact for a model with this grid and number of rays."""
    out = []
    for t in ALL:
        if t.transpose and grid[0] != grid[1]:
            continue
        if ray_permutation(t, n_rays) is None:
            continue
        out.append(t)
    return out


def _pad_for_flip(x: np.ndarray, axis: int, step: int) -> np.ndarray:
    pad = (1 - x.shape[axis]) % step
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths, mode="reflect" if x.shape[axis] > pad else "edge")


def apply(t: Transform, x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The transformed image (first two axes are Y, X; a trailing channel axis is kept)."""
    if t.flip_y:
        x = _pad_for_flip(x, 0, grid[0])
    if t.flip_x:
        x = _pad_for_flip(x, 1, grid[1])
    return np.ascontiguousarray(forward(t, x))


def predict_tta(predict: Predict, x: np.ndarray, grid: tuple[int, int], n_rays: int,
                transforms: list[Transform] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean probability and distances over ``transforms`` (default: all exact ones)."""
    transforms = transforms_for(grid, n_rays) if transforms is None else transforms
    out_shape = (math.ceil(x.shape[0] / grid[0]), math.ceil(x.shape[1] / grid[1]))
    prob_sum = np.zeros(out_shape, np.float32)
    dist_sum = np.zeros(out_shape + (n_rays,), np.float32)
    for t in transforms:
        p, d = predict(apply(t, x, grid), t)
        p = backward(t, np.asarray(p))[: out_shape[0], : out_shape[1]]  # views; padding cropped
        d = backward(t, np.asarray(d))[: out_shape[0], : out_shape[1]]
        prob_sum += p
        for k, j in enumerate(ray_permutation(t, n_rays)):  # ray by ray: no full-size temporary copy
            dist_sum[..., k] += d[..., j]
        del p, d
    n = len(transforms)
    prob_sum /= n
    dist_sum /= n
    return prob_sum, dist_sum
