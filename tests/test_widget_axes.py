"""How the Segment widget reads a layer's axes (pure functions, no Qt)."""
import pytest

from napari_cnnvision.widgets._axes import axes_choices, guess_layer_axes


@pytest.mark.parametrize("ndim, rgb, model_ndim, want", [
    (2, False, 2, ["YX"]), (3, True, 2, ["YX"]), (3, False, 2, ["ZYX", "TYX"]), (4, True, 2, ["ZYX", "TYX"]),
    (4, False, 2, ["TZYX"]), (3, False, 3, ["ZYX"]), (4, False, 3, ["TZYX"]), (2, False, 3, []), (5, False, 2, []),
])
def test_axes_choices(ndim, rgb, model_ndim, want):
    assert axes_choices(ndim, rgb, model_ndim) == want


def test_guess_uses_axis_labels_then_sampling():
    assert guess_layer_axes(3, False, 2, ("t", "y", "x")) == "TYX"
    assert guess_layer_axes(3, False, 2, ("time", "y", "x")) == "TYX"
    assert guess_layer_axes(3, False, 2, ("z", "y", "x"), (1, 1, 1)) == "ZYX"
    assert guess_layer_axes(3, False, 2, ("0", "1", "2"), (2.0, 0.5, 0.5)) == "ZYX"  # coarser steps in z
    assert guess_layer_axes(3, False, 2, ("0", "1", "2"), (1, 1, 1)) == "ZYX"  # no hint: a z-stack
    assert guess_layer_axes(3, False, 3, ("t", "y", "x")) == "ZYX"  # a 3-D model reads Z whatever the labels
    assert guess_layer_axes(2, False, 3) is None
