"""Test-time augmentation for StarDist 2D: exactness of the flips, turns and ray re-indexing.

A stand-in "network" computes StarDist's own training targets (star distances and the
distance-transform probability) from a label image. It is exactly equivariant, so every
transform, mapped back, must give back the plain output: a wrong ray permutation, a missing
un-flip or a grid offset of one pixel all show up as large differences.
"""
import numpy as np
import pytest
from stardist.geometry import star_dist
from stardist.utils import edt_prob

from napari_cnnvision.backends.stardist import tta


def _labels(shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lbl = np.zeros(shape, np.int32)
    lbl[((yy - 20) / 6) ** 2 + ((xx - 25) / 11) ** 2 < 1] = 1  # elongated, off-centre: rays differ
    lbl[((yy - 40) / 12) ** 2 + ((xx - 50) / 5) ** 2 < 1] = 2
    lbl[((yy - 3) / 5) ** 2 + ((xx - 8) / 5) ** 2 < 1] = 3  # cut by the top/left image edge
    return lbl


def _fake_network(grid, n_rays):
    def predict(x, t=None):
        x = np.asarray(x).astype(np.int32)
        return edt_prob(x)[:: grid[0], :: grid[1]], star_dist(x, n_rays, grid=grid)
    return predict


@pytest.mark.parametrize("grid", [(1, 1), (2, 2)])
@pytest.mark.parametrize("shape", [(61, 80), (64, 81)])  # odd and even lengths on each axis
def test_every_transform_maps_back_exactly(grid, shape):
    lbl = _labels(shape)
    net = _fake_network(grid, 32)
    p0, d0 = net(lbl)
    transforms = tta.transforms_for(grid, 32)
    assert len(transforms) == 8
    for t in transforms:
        p, d = tta.predict_tta(net, lbl, grid, 32, [t])
        assert p.shape == p0.shape and d.shape == d0.shape
        np.testing.assert_allclose(p, p0, atol=1e-6, err_msg=str(t))
        np.testing.assert_allclose(d, d0, atol=1e-4, err_msg=str(t))
    p, d = tta.predict_tta(net, lbl, grid, 32)  # the mean over all of them
    np.testing.assert_allclose(d, d0, atol=1e-4)


def test_without_re_indexing_the_rays_the_check_fails():
    """The test above can fail: mirrored distances without the ray permutation are far off."""
    lbl = _labels((61, 80))
    net = _fake_network((2, 2), 32)
    p0, d0 = net(lbl)
    t = tta.Transform(flip_y=False, flip_x=True, transpose=False)
    p, d = net(tta.apply(t, lbl, (2, 2)))
    d_unflipped = d[:, ::-1][: d0.shape[0], : d0.shape[1]]
    assert np.abs(d_unflipped - d0).max() > 5


def test_only_exact_transforms_are_used():
    assert tta.ray_permutation(tta.Transform(False, True, False), 32).tolist()[:3] == [16, 15, 14]
    # 6 rays (every 60°) survive mirroring but not a 90° transpose
    assert len(tta.transforms_for((2, 2), 6)) == 4
    # unequal grid steps: no transposes
    assert all(not t.transpose for t in tta.transforms_for((1, 2), 32))
    assert len(tta.transforms_for((1, 2), 32)) == 4


class _NumpyStarDist:
    """Just enough of a StarDist2D for the threshold optimizer, from stardist's numpy functions."""

    class config:
        grid = (1, 1)
        n_rays = 32

    def _instances_from_prediction(self, shape, prob, dist, prob_thresh, nms_thresh, b=2):
        from stardist.geometry import polygons_to_label
        from stardist.nms import non_maximum_suppression

        points, probi, disti = non_maximum_suppression(dist, prob, grid=(1, 1), b=b, prob_thresh=prob_thresh,
                                                       nms_thresh=nms_thresh)
        return polygons_to_label(disti, points, prob=probi, shape=shape), {}


def test_threshold_optimizer_scores_the_plugins_post_processing():
    from napari_cnnvision.backends.stardist.thresholds import optimize_thresholds, score

    rng = np.random.default_rng(0)
    masks = [_labels((61, 80)), _labels((64, 81))[::-1].copy()]
    for m in masks:
        m[:2, 60:72] = 4  # a nucleus cut by the top edge: two rows of it are in the image
    net = _fake_network((1, 1), 32)
    raw = []
    for m in masks:  # exact targets, probabilities with noise and a spurious blob below 0.5
        p, d = net(m)
        p = np.clip(p + rng.normal(0, 0.02, p.shape), 0, 1).astype(np.float32)
        p[50:54, 5:9] = 0.45
        raw.append((p, d))
    model = _NumpyStarDist()
    best = optimize_thresholds(model, masks, masks, raw=raw, prob_coarse=(0.2, 0.4, 0.6), nms_threshs=(0.3, 0.5))
    assert best["ap"] == 1.0 and 0.45 < best["prob"] < 0.8 and best["nms"] in (0.3, 0.5)
    assert score(model, masks, masks, raw, 0.3, 0.3) < 1.0  # the spurious blob counts at a low threshold
    # StarDist's default border of 2 loses the nucleus cut by the image edge
    assert score(model, masks, masks, raw, best["prob"], best["nms"], exclude_border=2) < 1.0
