"""The per-object table every segmentation backend returns (label, area, centroids, probability)."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_cnnvision.backends.common import object_table


@pytest.mark.parametrize("shape", [(97, 131), (9, 40, 33)])
def test_areas_and_centroids_match_scipy(shape):
    from skimage.measure import label

    rng = np.random.default_rng(1)
    lab = (label(rng.random(shape) > 0.6) % 50).astype(np.int32)
    lab[lab == 7] = 0  # a label that no pixel carries is left out
    probs = rng.random(int(lab.max()))
    t = object_table(lab, probs, frame=4)
    ids = np.unique(lab[lab > 0])
    assert t["label"].tolist() == ids.tolist() and 7 not in t["label"]
    np.testing.assert_array_equal(t["area"], ndi.sum(np.ones(shape), lab, ids))
    cents = np.asarray(ndi.center_of_mass(np.ones(shape), lab, ids))
    for i, axis in enumerate("zyx"[-len(shape):]):
        np.testing.assert_allclose(t[f"centroid_{axis}"], cents[:, i], atol=1e-9)
    np.testing.assert_array_equal(t["probability"], probs[ids - 1])
    assert (t["frame"] == 4).all()


def test_empty_labels_give_an_empty_table():
    t = object_table(np.zeros((5, 6), np.int32), np.zeros(0), None)
    assert all(len(v) == 0 for v in t.values()) and "frame" not in t
