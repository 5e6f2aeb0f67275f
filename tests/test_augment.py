"""backends/augment.py: image, labels and boxes transformed alike; the draw is the recipes'."""
import numpy as np
import pytest
from scipy.ndimage import find_objects

from napari_cnnvision.backends.augment import AugmentSettings, GlobalRandom, augment, zoom_patch
from napari_cnnvision.core.axes import InputError

NO_JITTER = AugmentSettings(gain=(1.0, 1.0), offset=0.0)
TRANSFORMS = [(k, flip) for k in range(4) for flip in (False, True)]


class FixedRandom:
    """A stand-in for the generator that draws a chosen transform."""

    def __init__(self, k=0, flip=False, gain=1.0, offset=0.0, zoom=(1.0, 1.0)):
        self.k, self.flip, self.zoom = k, flip, zoom
        self.jitter = [gain, offset]
        self.calls = []

    def integers(self, n):
        self.calls.append("integers")
        return self.k

    def random(self):
        self.calls.append("random")
        return 0.1 if self.flip else 0.9

    def uniform(self, low, high, size=None):
        self.calls.append("uniform")
        if size == 2:
            return np.log(np.asarray(self.zoom, float))
        return self.jitter.pop(0)


def _boxes_image(shape, boxes):
    """Label image with box i filled with i + 1 (boxes with whole-pixel edges, not overlapping)."""
    out = np.zeros(shape, np.int32)
    for i, (y0, x0, y1, x1) in enumerate(np.round(boxes).astype(int)):
        out[y0:y1, x0:x1] = i + 1
    return out


def _scene(shape=(40, 56)):
    rng = np.random.default_rng(1)
    boxes = np.array([[2, 3, 12, 20], [15, 30, 37, 34], [25, 4, 31, 26], [0, 45, 8, 56]], float)
    labels = _boxes_image(shape, boxes)
    image = labels * 10.0 + rng.random(shape)  # every pixel tells where it came from
    return image.astype(np.float32), labels, boxes


@pytest.mark.parametrize("k,flip", TRANSFORMS)
def test_image_and_labels_are_transformed_together(k, flip):
    image, labels, boxes = _scene()
    out = augment(FixedRandom(k, flip), image, labels, settings=NO_JITTER)
    want = np.rot90(image, k)
    want = want[:, ::-1] if flip else want
    np.testing.assert_array_equal(out.image, want)
    np.testing.assert_array_equal(np.floor(out.image / 10).astype(np.int32), out.labels)  # still aligned
    assert out.image.flags.c_contiguous and out.labels.flags.c_contiguous and out.labels.dtype == labels.dtype
    # channel-first (CYX) and channel-last (YXC) images: every channel goes with the labels
    cyx = np.stack([image, image + 1000])
    o1 = augment(FixedRandom(k, flip), cyx, labels, settings=NO_JITTER, y_axis=1)
    np.testing.assert_array_equal(o1.image[0], out.image)
    np.testing.assert_array_equal(o1.image[1], out.image + 1000)
    o2 = augment(FixedRandom(k, flip), np.moveaxis(cyx, 0, -1), labels, settings=NO_JITTER)
    np.testing.assert_array_equal(np.moveaxis(o2.image, -1, 0), o1.image)
    np.testing.assert_array_equal(o1.labels, out.labels)


@pytest.mark.parametrize("k,flip", TRANSFORMS)
def test_boxes_move_like_the_image(k, flip):
    image, labels, boxes = _scene()
    out = augment(FixedRandom(k, flip), image, labels, boxes=boxes, settings=NO_JITTER)
    assert out.boxes.shape == (4, 4) and list(out.box_index) == [0, 1, 2, 3]
    # the boxes drawn after the transform are the transformed drawing of the boxes
    np.testing.assert_array_equal(_boxes_image(out.labels.shape, out.boxes), out.labels)
    assert (out.boxes[:, 2] > out.boxes[:, 0]).all() and (out.boxes[:, 3] > out.boxes[:, 1]).all()


@pytest.mark.parametrize("zoom,n_kept", [((1.3, 0.7), 4), ((0.6, 0.6), 4), ((1.5, 1.5), 4), ((2.5, 2.5), 2)])
def test_zoomed_boxes_are_the_zoomed_objects(zoom, n_kept):
    image, labels, boxes = _scene()
    out = augment(FixedRandom(1, True, zoom=zoom), image, labels, boxes=boxes,
                  settings=AugmentSettings(gain=(1.0, 1.0), offset=0.0, zoom=0.6))
    assert out.image.shape == (56, 40) and out.labels.shape == (56, 40)
    found = find_objects(out.labels)
    kept = [i for i, sl in enumerate(found) if sl is not None]
    assert list(out.box_index) == kept and len(kept) == n_kept  # a box zoomed out of the patch goes
    for b, i in zip(out.boxes, kept):
        sl = found[i]
        obj = np.array([sl[0].start, sl[1].start, sl[0].stop, sl[1].stop], float)
        assert np.abs(b - obj).max() <= 1.0, (b, obj)  # nearest-neighbour pixels vs exact edges


def test_zoom_keeps_labels_integer_and_patch_shape():
    image, labels, _ = _scene()
    labels16 = labels.astype(np.uint16)
    for f in [(1.37, 0.81), (0.5, 0.5), (2.0, 1.1)]:
        zx, zy = zoom_patch(image, labels16, f)
        assert zx.shape == image.shape and zy.shape == labels.shape and zy.dtype == np.uint16
        assert set(np.unique(zy)) <= set(np.unique(labels16))  # no blended or new labels
    zx, zy = zoom_patch(image, labels, (0.5, 0.5))
    assert (zy[:10] == 0).all() and np.allclose(zx[:10], image.min())  # zoom-out pads with background
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = augment(rng, image, labels16, settings=AugmentSettings(zoom=0.5))
        assert out.labels.dtype == np.uint16 and set(np.unique(out.labels)) <= set(np.unique(labels16))


def test_draw_order_is_the_recipes():
    """The random numbers are drawn as the trainers drew them before the module was shared
    (zoom, turn, flip, gain, offset), so a seeded recipe trains on the same patches."""
    image, labels, _ = _scene()
    rng = np.random.default_rng(7)
    out = [augment(rng, image, labels) for _ in range(4)]
    ref = np.random.default_rng(7)
    for o in out:
        k = int(ref.integers(4))
        x, y = np.rot90(image, k), np.rot90(labels, k)
        if ref.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = x * ref.uniform(0.6, 1.4) + ref.uniform(-0.2, 0.2)
        np.testing.assert_array_equal(o.image, x)
        np.testing.assert_array_equal(o.labels, y)
    rec = FixedRandom(zoom=(1.1, 1.2))
    augment(rec, image, labels, settings=AugmentSettings(zoom=0.3))
    assert rec.calls == ["uniform", "integers", "random", "uniform", "uniform"]
    rec = FixedRandom()
    augment(rec, image, settings=AugmentSettings(flips=False))
    assert rec.calls == ["uniform", "uniform"]  # no turn drawn, only the jitter


def test_global_random_follows_numpys_seed():
    image, labels, _ = _scene()
    np.random.seed(3)
    a = augment(GlobalRandom, image, labels, settings=AugmentSettings(zoom=0.2))
    np.random.seed(3)
    b = augment(GlobalRandom, image, labels, settings=AugmentSettings(zoom=0.2))
    c = augment(GlobalRandom, image, labels, settings=AugmentSettings(zoom=0.2))
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(b.image, c.image)


def test_intensity_jitter_changes_the_image_only():
    image, labels, boxes = _scene()
    out = augment(FixedRandom(0, False, gain=1.25, offset=-0.1), image, labels, boxes=boxes)
    np.testing.assert_allclose(out.image, image * 1.25 - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(out.labels, labels)
    np.testing.assert_array_equal(out.boxes, boxes)


@pytest.mark.parametrize("kw,field", [({"gain": (1.4, 0.6)}, "gain"), ({"gain": (0, 1)}, "gain"),
                                      ({"offset": -0.1}, "offset"), ({"zoom": float("nan")}, "zoom"),
                                      ({"flips": 1}, "flips")])
def test_bad_augment_settings_are_clear_errors(kw, field):
    with pytest.raises(InputError, match=f"augment.{field}"):
        AugmentSettings(**kw)


def test_labels_must_fit_the_image():
    with pytest.raises(InputError, match="do not fit"):
        augment(np.random.default_rng(0), np.zeros((8, 9)), np.zeros((9, 8), np.int32))
