"""Result types, their napari layer conversion, the LRU cache and the (task, backend) dispatch."""
import numpy as np
import pytest


def _det(has_frames=False):
    from napari_cnnvision.core.results import DetectionResult

    return DetectionResult(boxes=[[10, 20, 30, 60], [0, 0, 5, 5]], class_ids=[1, 0], scores=[0.9, 0.4],
                           class_names=["RBC", "white cell é"], model="m", image_shape=(100, 120),
                           frame=[2, 0] if has_frames else None, has_frames=has_frames)


def test_detection_result_checks_class_ids():
    from napari_cnnvision.core.results import DetectionResult

    with pytest.raises(ValueError, match="class ids"):
        DetectionResult([[0, 0, 1, 1]], [3], [0.5], ["a"], "m", (4, 4))
    empty = DetectionResult(np.zeros((0, 4)), [], [], ["a"], "m", (4, 4))
    assert empty.n_objects == 0 and empty.counts() == {"a": 0} and empty.centers.shape == (0, 2)


def test_detection_layers_rectangles_points_and_features():
    from napari_cnnvision.layers import RESULT_KEY, detection_layers

    res = _det()
    (rects, skw, kind), (pts, pkw, pkind) = detection_layers(res, "smear", scale=(1, 0.5, 0.5))
    assert (kind, pkind) == ("shapes", "points")
    assert skw["name"] == "smear [m]" and skw["metadata"][RESULT_KEY]["kind"] == "detection"
    # corners in (row, col) order: y0,x0 / y0,x1 / y1,x1 / y1,x0
    np.testing.assert_array_equal(rects[0], [[10, 20], [10, 60], [30, 60], [30, 20]])
    assert list(skw["features"]["class"]) == ["white cell é", "RBC"]
    np.testing.assert_allclose(pts, [[20, 40], [2.5, 2.5]])
    assert skw["scale"] == (0.5, 0.5) and pkw["scale"] == (0.5, 0.5)
    assert skw["edge_color"][0] != skw["edge_color"][1]  # one colour per class


def test_detection_layers_of_a_stack_carry_the_frame():
    from napari_cnnvision.layers import detection_layers

    (rects, skw, _), (pts, _, _) = detection_layers(_det(has_frames=True), "stack")
    assert skw["ndim"] == 3 and rects[0].shape == (4, 3)
    assert set(rects[0][:, 0]) == {2} and pts[0][0] == 2
    assert list(skw["features"]["frame"]) == [2, 0]


def test_localization_layers_in_napari():
    from napari.layers import Points, Shapes

    from napari_cnnvision.core.results import LocalizationResult
    from napari_cnnvision.layers import detection_layers

    res = LocalizationResult([[1, 2, 8, 9]], [0], [0.7], ["Neutrophil", "Lymphocyte"], "loc", (16, 16),
                             probabilities=[[0.7, 0.3]])
    out = detection_layers(res, "img")
    shapes = Shapes(out[0][0], **out[0][1])
    points = Points(out[1][0], **out[1][1])
    assert shapes.nshapes == 1 and len(points.data) == 1
    assert shapes.features["p_Lymphocyte"][0] == pytest.approx(0.3)
    assert out[0][1]["metadata"]["napari_cnnvision"]["kind"] == "localization"
    empty = detection_layers(LocalizationResult(np.zeros((0, 4)), [], [], ["a"], "loc", (4, 4)), "img")
    assert Shapes(empty[0][0], **empty[0][1]).nshapes == 0


def test_lru_cache():
    from napari_cnnvision.core.cache import LRUCache

    c = LRUCache(2)
    calls = []
    for k in ["a", "b", "a", "c", "b"]:
        c.get_or_make(k, lambda k=k: calls.append(k) or k.upper())
    assert calls == ["a", "b", "c", "b"]  # "b" was dropped when "c" came (a was used more recently)
    assert (c.hits, c.misses, len(c)) == (1, 4, 2)


def test_dispatch_by_task_and_backend():
    from napari_cnnvision.backends.dispatch import job_for
    from napari_cnnvision.core.axes import InputError
    from napari_cnnvision.core.registry import ModelCard

    card = ModelCard("u", "segment", "unet")
    assert job_for(card) == "unet.predict" and job_for(card, "train") == "unet.train"
    with pytest.raises(InputError, match="not a detect model"):
        job_for(card, task="detect")
    with pytest.raises(InputError, match="no detect backend 'nope'"):
        job_for(ModelCard("x", "detect", "nope"))
