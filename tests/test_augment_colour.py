"""backends/augment.py: the colour jitter of multi-channel images (off by default; 1 channel untouched)."""
import numpy as np
import pytest

from napari_cnnvision.backends.augment import (AugmentSettings, GlobalRandom, augment, colour_jitter,
                                               colour_matrix)
from napari_cnnvision.core.axes import InputError

PLAIN = dict(flips=False, gain=(1.0, 1.0), offset=0.0)


def _rgb(shape=(12, 16), seed=0):
    return np.random.default_rng(seed).random(shape + (3,)).astype(np.float32)


def test_off_by_default_and_the_draw_is_unchanged():
    assert AugmentSettings().colour == 0.0
    x = _rgb()
    a = augment(np.random.default_rng(5), x, settings=AugmentSettings())
    b = augment(np.random.default_rng(5), x, settings=AugmentSettings(colour=0.0))
    np.testing.assert_array_equal(a.image, b.image)


def test_channels_are_mixed_by_the_drawn_matrix_yxc_and_cyx():
    x = _rgb()
    s = AugmentSettings(colour=0.3, **PLAIN)
    out = augment(np.random.default_rng(2), x, settings=s).image
    m = colour_matrix(np.random.default_rng(2), 3, 0.3)
    np.testing.assert_allclose(out, x @ m.T, rtol=1e-5)
    assert np.all(np.abs(np.diag(m) - 1) <= 0.3) and np.all(np.abs(m - np.diag(np.diag(m))) <= 0.15)
    assert not np.allclose(out, x)
    chw = np.ascontiguousarray(np.moveaxis(x, -1, 0))
    out_chw = augment(np.random.default_rng(2), chw, settings=s, y_axis=1).image
    np.testing.assert_allclose(np.moveaxis(out_chw, 0, -1), out, rtol=1e-5)
    assert out_chw.flags.c_contiguous


def test_one_channel_images_are_left_alone_and_draw_nothing():
    g = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(colour_jitter(rng, g, 0.5), g)
    np.testing.assert_array_equal(colour_jitter(rng, g[..., None], 0.5), g[..., None])
    assert rng.random() == np.random.default_rng(1).random()  # the generator was not advanced
    out = augment(np.random.default_rng(3), g, settings=AugmentSettings(colour=0.5))
    ref = augment(np.random.default_rng(3), g, settings=AugmentSettings())
    np.testing.assert_array_equal(out.image, ref.image)


def test_labels_follow_geometry_only_and_global_random_is_seeded():
    x = _rgb((16, 16))
    y = np.zeros((16, 16), np.int32)
    y[2:6, 3:9] = 1
    np.random.seed(4)
    a = augment(GlobalRandom, x, y, settings=AugmentSettings(colour=0.2))
    np.random.seed(4)
    b = augment(GlobalRandom, x, y, settings=AugmentSettings(colour=0.2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.dtype == y.dtype and set(np.unique(a.labels)) == {0, 1}


@pytest.mark.parametrize("v", [-0.1, 1.0, float("nan"), "0.2", True])
def test_bad_colour_is_a_clear_error(v):
    with pytest.raises(InputError, match="augment.colour"):
        AugmentSettings(colour=v)
