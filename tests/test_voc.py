"""Pascal VOC annotations -> (y0, x0, y1, x1) boxes; the BCCD split loader."""
import numpy as np
import pytest

from napari_cnnvision.core.formats import boxes_from_xywh, boxes_from_xyxy, boxes_to_xywh, boxes_to_xyxy
from napari_cnnvision.core.formats.voc import AnnotationError, parse_voc, read_voc

VOC = """<annotation>
  <folder>JPEGImages</folder>
  <filename>smear_7.jpg</filename>
  <size><width>640</width><height>480</height><depth>3</depth></size>
  <object><name>WBC</name><difficult>0</difficult>
    <bndbox><xmin>11</xmin><ymin>201</ymin><xmax>60</xmax><ymax>300</ymax></bndbox></object>
  <object><name> RBC </name><difficult>1</difficult>
    <bndbox><xmin>501</xmin><ymin>31</ymin><xmax>640</xmax><ymax>70</ymax></bndbox></object>
  <object><name>RBC</name>
    <bndbox><xmin>100</xmin><ymin>100</ymin><xmax>100</xmax><ymax>140</ymax></bndbox></object>
  <object><name>Platelets</name>
    <bndbox><xmin>600</xmin><ymin>470</ymin><xmax>700</xmax><ymax>500</ymax></bndbox></object>
</annotation>
"""


def test_voc_box_order_and_conventions(tmp_path):
    """VOC's 1-based inclusive (xmin, ymin, xmax, ymax) becomes 0-based (y0, x0, y1, x1), exclusive ends."""
    f = tmp_path / "smear_7.xml"
    f.write_text(VOC)
    ann = read_voc(f)
    assert ann.filename == "smear_7.jpg"
    assert ann.shape == (480, 640)  # (height, width): rows first
    assert ann.classes == ["WBC", "RBC", "Platelets"]  # names stripped
    np.testing.assert_array_equal(ann.boxes, [[200, 10, 300, 60],  # rows 201..300 -> 200..300, cols 11..60
                                              [30, 500, 70, 640],
                                              [469, 599, 480, 640]])  # clipped to the image size
    assert ann.dropped == 1 and "zero width or height" in ann.warnings[0]  # xmin == xmax
    assert ann.difficult.tolist() == [False, True, False]
    assert ann.class_ids(["RBC", "WBC", "Platelets"]).tolist() == [1, 0, 2]
    with pytest.raises(AnnotationError, match="not among"):
        ann.class_ids(["RBC"])
    # a box's height is its row extent: WBC is 100 rows tall and 50 columns wide
    h, w = ann.boxes[0, 2] - ann.boxes[0, 0], ann.boxes[0, 3] - ann.boxes[0, 1]
    assert (h, w) == (100, 50)


def test_box_order_helpers_round_trip():
    b = np.array([[10.0, 20.0, 50.0, 80.0]])  # y0, x0, y1, x1
    np.testing.assert_array_equal(boxes_to_xyxy(b), [[20, 10, 80, 50]])
    np.testing.assert_array_equal(boxes_from_xyxy(boxes_to_xyxy(b)), b)
    np.testing.assert_array_equal(boxes_to_xywh(b), [[20, 10, 60, 40]])  # COCO: x, y, width, height
    np.testing.assert_array_equal(boxes_from_xywh(boxes_to_xywh(b)), b)
    assert boxes_from_xyxy([]).shape == (0, 4)


@pytest.mark.parametrize("text, msg", [
    ("<annotation><object><name>A</name></object></annotation>", "no <bndbox>"),
    ("<annotation><object><name>A</name><bndbox><xmin>x</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax>"
     "</bndbox></object></annotation>", "not a number"),
    ("<notvoc/>", "not a Pascal VOC"),
    ("<annotation><object>", "not valid XML"),
])
def test_bad_voc_is_a_clear_error(text, msg):
    with pytest.raises(AnnotationError, match=msg):
        parse_voc(text, "x.xml")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read"):
        read_voc(tmp_path / "nope.xml")


def test_bccd_val_split(shared_data):
    from napari_cnnvision.backends.detection.data import load_split

    split = load_split(shared_data / "bccd", "val", classes=["RBC", "WBC", "Platelets"], images=False)
    assert len(split) == 87
    # the README's counts, less the one zero-area RBC box of BloodImage_00338
    assert split.counts() == {"RBC": 967, "WBC": 87, "Platelets": 83} and split.dropped == 1
    allb = np.concatenate([b for b, _ in split.truths()])
    assert allb.min() >= 0 and allb[:, 2].max() <= 480 and allb[:, 3].max() <= 640
    assert ((allb[:, 2] > allb[:, 0]) & (allb[:, 3] > allb[:, 1])).all()
    one = load_split(shared_data / "bccd", "val")  # classes collected, images read
    img, boxes, ids = one[0]
    assert img.shape == (480, 640, 3) and len(boxes) == len(ids)
    assert set(one.classes) == {"RBC", "WBC", "Platelets"}
