"""StarDist 2D training targets, as ``stardist``'s data generator computes them (numpy / scipy;
``torch`` only inside :func:`star_dist`): label holes filled, the object probability (normalized
distance to the boundary) and the star-convex distances along each ray, for
:mod:`.torch_train`'s PyTorch training."""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_fill_holes, distance_transform_edt, find_objects


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
