"""The Export widget: layers -> a dataset folder that reads back; ellipse warning shown; errors in the status."""
import numpy as np
import pytest

from napari_cnnvision.core.formats.annotations import read_annotations


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    from napari_cnnvision.widgets.export import ExportWidget

    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 20, 30)).astype(np.uint8), name="movie")
    shapes = viewer.add_shapes([np.array([[0, 1, 2], [0, 1, 9], [0, 6, 9], [0, 6, 2]]),
                                np.array([[2, 3, 3], [2, 3, 12], [2, 9, 12], [2, 9, 3]])],
                               shape_type="rectangle", features={"class": ["RBC", "white cell é"]}, name="boxes")
    w = ExportWidget(viewer)
    w.out.value = tmp_path / "ds"
    return viewer, w, img, shapes


def wait_done(qtbot, w):
    qtbot.waitUntil(lambda: w._thread is None and not w.cancel_btn.enabled, timeout=30000)


def test_export_widget_writes_a_yolo_dataset(widget, qtbot, tmp_path):
    viewer, w, img, shapes = widget
    assert w.image.value == "movie" and w.shapes.value == "boxes"
    w.format.value = "yolo"
    w.val.value = 0.34
    w.run()
    wait_done(qtbot, w)
    assert "wrote 3 images" in w.status.value, w.status.value
    ds = read_annotations(tmp_path / "ds")
    got = {a.image.split("/")[-1]: a for a in ds.images}
    assert set(got) == {"movie_t0000.png", "movie_t0001.png", "movie_t0002.png"}
    np.testing.assert_allclose(got["movie_t0002.png"].boxes, [[3, 3, 9, 12]], atol=1e-4)
    assert got["movie_t0002.png"].classes == ["white cell é"]
    assert (tmp_path / "ds" / "images" / "val").is_dir() and (tmp_path / "ds" / "data.yaml").is_file()


def test_ellipse_warning_in_the_widget(widget, qtbot, tmp_path):
    viewer, w, img, shapes = widget
    shapes.add_ellipses(np.array([[1, 7, 11], [1, 7, 19], [1, 13, 19], [1, 13, 11]]))  # its bounding box
    shapes.features.loc[2, "class"] = "RBC"
    w.format.value = "coco"
    w.run()
    wait_done(qtbot, w)
    assert "bounding boxes" in w.summary.value and "wrote 3 images" in w.status.value
    ds = read_annotations(tmp_path / "ds" / "annotations.json")
    got = {a.image: a for a in ds.images}
    np.testing.assert_allclose(got["movie_t0001.png"].boxes, [[7, 11, 13, 19]])


def test_masks_format_without_labels_is_refused(widget, qtbot, tmp_path):
    viewer, w, img, shapes = widget
    w.format.value = "masks"
    w.run()
    assert "needs a Labels layer" in w.status.value and not (tmp_path / "ds").exists()
    viewer.add_labels(np.zeros((3, 20, 30), np.uint16), name="lab").data[1, 2:5, 3:9] = 4
    w._refresh()
    w.labels.value = "lab"
    w.run()
    wait_done(qtbot, w)
    ds = read_annotations(tmp_path / "ds")
    got = {a.image: a for a in ds.images}
    np.testing.assert_array_equal(got["movie_t0001.png"].boxes, [[2, 3, 5, 9]])
    assert len(got["movie_t0000.png"]) == 0
