"""The synthetic blood-smear sample: deterministic, opens in napari as RGB, and the shipped detector sees its cells."""
import numpy as np

from napari_cnnvision.sample_data import blood_smear_image


def test_blood_smear_is_deterministic_rgb():
    a, b = blood_smear_image(), blood_smear_image()
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, blood_smear_image(seed=8))
    # pale background, red discs (R above G), purple nuclei (B above R somewhere)
    r, g, bl = (a[..., k].astype(int) for k in range(3))
    assert np.median(r) > np.median(g)
    assert ((bl - r) > 40).sum() > 1000  # WBC nuclei and platelets


def test_blood_smear_opens_in_napari_as_rgb(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cnnvision", "blood_smear")
    layer = viewer.layers["blood_smear"]
    assert layer.rgb and layer.data.shape == (480, 640, 3)
    assert np.array_equal(np.asarray(layer.data), blood_smear_image())


def test_shipped_detector_finds_the_synthetic_cells():
    from napari_cnnvision import api

    res = api.detect(blood_smear_image(), model="bloodcells-yolo")
    counts = res.counts()
    assert counts["RBC"] >= 15, counts  # ~35 discs are drawn, about 29 whole enough to be found
    assert counts["WBC"] >= 1, counts
