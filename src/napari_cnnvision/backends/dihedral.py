"""The 8 flips / 90° turns of an image (the dihedral group), for test-time augmentation.

Pure numpy and backend-independent: :func:`forward` turns an array into a transformed view,
:func:`backward` maps an output computed on that view back to the original frame. The StarDist
backend adds what is special to it (grid alignment, ray re-indexing) in ``stardist/tta.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transform:
    flip_y: bool
    flip_x: bool
    transpose: bool  # applied after the flips

    def direction(self, dy: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where a direction (dy, dx) of the original image points in the transformed one."""
        if self.flip_y:
            dy = -dy
        if self.flip_x:
            dx = -dx
        if self.transpose:
            dy, dx = dx, dy
        return dy, dx


ALL = [Transform(fy, fx, t) for t in (False, True) for fy in (False, True) for fx in (False, True)]


def forward(t: Transform, x: np.ndarray, y_axis: int = 0) -> np.ndarray:
    """A view of ``x`` transformed by ``t``; its Y and X axes are ``y_axis`` and ``y_axis + 1``."""
    if t.flip_y:
        x = np.flip(x, y_axis)
    if t.flip_x:
        x = np.flip(x, y_axis + 1)
    if t.transpose:
        x = np.swapaxes(x, y_axis, y_axis + 1)
    return x


def backward(t: Transform, x: np.ndarray, y_axis: int = 0) -> np.ndarray:
    """A view of an output of ``forward(t, ...)`` mapped back to the original frame."""
    if t.transpose:
        x = np.swapaxes(x, y_axis, y_axis + 1)
    if t.flip_x:
        x = np.flip(x, y_axis + 1)
    if t.flip_y:
        x = np.flip(x, y_axis)
    return x
