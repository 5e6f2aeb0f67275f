"""Annotation formats: COCO, YOLO, Pascal VOC, CSV and mask TIFFs through the one AnnotationSet."""
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cnnvision.core.formats import coco, csv_boxes, masks, voc, yolo
from napari_cnnvision.core.formats.annotations import (AnnotationSet, ImageAnnotations, detect_format, number,
                                                       read_annotations, split_frames, write_annotations)
from napari_cnnvision.core.formats.voc import AnnotationError

CLASSES = ["RBC", "white cell é", "platelet clump"]


def make_images(folder, sizes):
    """Image files of the given (name, (h, w), rgb) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (h, w), rgb in sizes:
        arr = np.zeros((h, w, 3) if rgb else (h, w), np.uint8)
        arr[::3] = 200
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, arr)
        else:
            Image.fromarray(arr).save(folder / name)
    return folder


def sample_set():
    a = ImageAnnotations("smear 1.png", (48, 64), [[2.25, 3.5, 20.125, 30.0], [10, 40, 47.5, 63.75]],
                         ["white cell é", "RBC"])
    b = ImageAnnotations("field_2.tif", (30, 50), [[0, 0, 30, 50], [5.5, 6.25, 9.75, 12.0], [1, 1, 3, 2.5]],
                         ["platelet clump", "RBC", "RBC"])
    return AnnotationSet([a, b], CLASSES)


def by_image(ds):
    return {os.path.basename(a.image): a for a in ds.images}


def assert_same(ds, ref, tol=1e-6):
    got, want = by_image(ds), by_image(ref)
    assert set(got) == set(want)
    for k, w in want.items():
        g = got[k]
        assert g.classes == w.classes, k
        np.testing.assert_allclose(g.boxes, w.boxes, atol=tol, rtol=0)


def test_round_trip_coco_yolo_voc_csv_coco(tmp_path):
    """Boxes (to float precision; YOLO's 6 decimals: 1e-6 of the image size) and class names with spaces
    and unicode survive COCO -> YOLO -> VOC -> CSV -> COCO."""
    images = make_images(tmp_path / "images", [("smear 1.png", (48, 64), True), ("field_2.tif", (30, 50), False)])
    ref = sample_set()
    src = write_annotations(ref, "coco", tmp_path / "c1")[0]
    chain = [("yolo", "y"), ("voc", "v"), ("csv", "s"), ("coco", "c2")]
    path, tol = src, 1e-6
    for fmt, d in chain:
        ds = read_annotations(path, images=images)
        assert_same(ds, ref, tol=tol)
        tol = 1e-6 * 64  # from YOLO on: its 6 decimals of the image's width / height
        written = write_annotations(ds, fmt, tmp_path / d)
        path = tmp_path / d if fmt in ("yolo", "voc") else written[0]
    final = read_annotations(path, images=images)
    assert_same(final, ref, tol=1e-6 * 64)
    assert set(final.class_names) == set(CLASSES)
    assert {a.image for a in final.images} == {"smear 1.png", "field_2.tif"}  # base names
    assert {a.image: a.size for a in final.images} == {"smear 1.png": (48, 64), "field_2.tif": (30, 50)}


def test_coco_file_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    ds = sample_set()
    ds.images[0].scores = np.array([0.9, 0.25])
    ds.images[1].scores = np.array([0.5, 0.75, 1.0])
    p = coco.write_coco(ds, tmp_path / "a.json")
    c = COCO(str(p))
    assert sorted(c.getCatIds()) == [1, 2, 3] and c.loadCats(2)[0]["name"] == "white cell é"
    img = c.loadImgs(c.getImgIds())[0]
    assert (img["file_name"], img["height"], img["width"]) == ("smear 1.png", 48, 64)
    anns = c.loadAnns(c.getAnnIds(imgIds=[img["id"]]))
    assert [a["bbox"] for a in anns] == [[3.5, 2.25, 26.5, 17.875], [40, 10, 23.75, 37.5]]  # x, y, w, h
    back = coco.read_coco(p)
    np.testing.assert_allclose(back.images[1].scores, [0.5, 0.75, 1.0])


def test_yolo_lines_follow_the_spec(tmp_path):
    """Parsed by a reader written from the format's description: class cx cy w h, normalized to 0..1."""
    ds = sample_set()
    yolo.write_yolo(ds, tmp_path)
    assert (tmp_path / "classes.txt").read_text(encoding="utf-8").splitlines() == CLASSES
    lines = (tmp_path / "labels" / "smear 1.txt").read_text().splitlines()
    assert len(lines) == 2
    fields = [ln.split() for ln in lines]
    assert all(len(f) == 5 for f in fields)
    c, cx, cy, w, h = int(fields[0][0]), *map(float, fields[0][1:])
    assert c == 1  # "white cell é"
    # box y 2.25..20.125, x 3.5..30 in a 64 wide, 48 high image
    assert cx == pytest.approx((3.5 + 30) / 2 / 64, abs=1e-6) and w == pytest.approx(26.5 / 64, abs=1e-6)
    assert cy == pytest.approx((2.25 + 20.125) / 2 / 48, abs=1e-6) and h == pytest.approx(17.875 / 48, abs=1e-6)


def test_voc_file_reads_with_xml_etree(tmp_path):
    ds = sample_set()
    (p, _) = voc.write_voc(ds, tmp_path)
    root = ET.parse(p).getroot()
    assert root.findtext("filename") == "smear 1.png"
    assert (root.findtext("size/width"), root.findtext("size/height")) == ("64", "48")
    obj = root.findall("object")[1]
    assert obj.findtext("name") == "RBC"
    bb = {t: float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")}
    assert bb == {"xmin": 41, "ymin": 11, "xmax": 63.75, "ymax": 47.5}  # 1-based inclusive starts
    assert root.findall("object")[0].findtext("name") == "white cell é"


def test_stack_boxes_one_file_per_frame_in_yolo_and_voc(tmp_path):
    a = ImageAnnotations("movie.tif", (20, 30), [[1, 1, 5, 5], [2, 2, 6, 6], [0, 0, 3, 3]], ["A", "B", "A"],
                         frame=[0, 2, 2])
    ds = AnnotationSet([a], ["A", "B"])
    assert [x.image for x in split_frames(ds).images] == ["movie_t0000.tif", "movie_t0002.tif"]
    voc.write_voc(ds, tmp_path / "v")
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["movie_t0000.xml", "movie_t0002.xml"]
    assert len(voc.read_voc(tmp_path / "v" / "movie_t0002.xml")) == 2
    back = coco.read_coco(coco.to_dict(ds))  # COCO and CSV keep the frame
    assert back.images[0].frame.tolist() == [0, 2, 2]
    csv_boxes.write_boxes_csv(ds, tmp_path / "b.csv")
    assert csv_boxes.read_boxes_csv(tmp_path / "b.csv").images[0].frame.tolist() == [0, 2, 2]


def test_empty_sets_write_valid_files(tmp_path):
    from pycocotools.coco import COCO

    ds = AnnotationSet([ImageAnnotations("e.png", (10, 12))], ["cell"])
    files = {f: write_annotations(ds, f, tmp_path / f) for f in ("coco", "yolo", "voc", "csv")}
    c = COCO(str(files["coco"][0]))
    assert len(c.getImgIds()) == 1 and c.getAnnIds() == []
    assert (tmp_path / "yolo" / "labels" / "e.txt").read_text() == ""
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "cell\n"
    assert len(voc.read_voc(tmp_path / "voc" / "e.xml")) == 0
    assert (tmp_path / "csv" / "boxes.csv").read_text() == "image,class,xmin,ymin,xmax,ymax\n"


def test_coco_polygon_and_rle_masks(tmp_path):
    """Polygons (pixel-edge coordinates) and RLE give an instance label image; labels written back
    as RLE read back identical, a rectangle as a polygon too."""
    d = {"images": [{"id": 7, "file_name": "m.png", "height": 6, "width": 8}],
         "categories": [{"id": 3, "name": "nucleus"}, {"id": 9, "name": "cell body"}],
         "annotations": [{"id": 1, "image_id": 7, "category_id": 9, "bbox": [2, 1, 3, 2],
                          "segmentation": [[2, 1, 5, 1, 5, 3, 2, 3]]},
                         {"id": 2, "image_id": 7, "category_id": 3,
                          "segmentation": {"size": [6, 8], "counts": [45, 2, 1]}}]}
    ds = coco.read_coco(d)
    a = ds.images[0]
    assert ds.class_names == ["nucleus", "cell body"] and a.classes == ["cell body", "nucleus"]
    want = np.zeros((6, 8), np.uint16)
    want[1:3, 2:5] = 1
    want[3:5, 7] = 2  # column-major RLE: 45 zeros then 2 ones -> column 7, rows 3..4
    np.testing.assert_array_equal(a.labels, want)
    np.testing.assert_array_equal(a.boxes, [[1, 2, 3, 5], [3, 7, 5, 8]])  # bbox of the RLE mask from the mask
    for fmt in ("rle", "polygon"):
        back = coco.read_coco(json.loads(json.dumps(coco.to_dict(ds, mask_format=fmt))))
        np.testing.assert_array_equal(back.images[0].labels, want)


def test_mask_tiffs_uint16_or_uint32(tmp_path):
    small = np.zeros((8, 8), np.int64)
    small[1:3, 1:4] = 5
    big = small.copy()
    big[5:7, 5:7] = 70000
    masks.write_mask_tiff(tmp_path / "s.tif", small)
    masks.write_mask_tiff(tmp_path / "b.tif", big)
    assert tifffile.imread(tmp_path / "s.tif").dtype == np.uint16
    b = tifffile.imread(tmp_path / "b.tif")
    assert b.dtype == np.uint32 and b.max() == 70000
    # a folder of label TIFFs beside images: boxes from the labels
    make_images(tmp_path / "ds" / "images", [("b.png", (8, 8), False)])
    (tmp_path / "ds" / "masks").mkdir()
    os.replace(tmp_path / "b.tif", tmp_path / "ds" / "masks" / "b.tif")
    assert detect_format(tmp_path / "ds")[0] == "masks"
    ds, found = masks.read_masks(tmp_path / "ds")
    assert found == {"b.png": tmp_path / "ds" / "images" / "b.png"}
    np.testing.assert_array_equal(ds.images[0].boxes, [[1, 1, 3, 4], [5, 5, 7, 7]])
    assert ds.images[0].labels.max() == 2  # renumbered: label k + 1 is box k


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    p = coco.write_coco(sample_set(), tmp_path / "a.json")
    before = p.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        coco.write_coco(AnnotationSet([], ["x"]), p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_number_text_has_no_float_noise():
    assert [number(v) for v in (3.0, 2.5, 0.1 + 0.2, -1.0000000001, 1 / 3)] == ["3", "2.5", "0.3", "-1", "0.333333"]


# --- bad input ---------------------------------------------------------------------------------------

def test_coco_bad_input(tmp_path):
    base = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
            "categories": [{"id": 1, "name": "c"}]}
    with pytest.raises(AnnotationError, match="image id that is not among"):
        coco.read_coco({**base, "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(AnnotationError, match="unknown category"):
        coco.read_coco({**base, "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}]})
    with pytest.raises(AnnotationError, match="negative width"):
        coco.read_coco({**base, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, -2, 3]}]})
    ds = coco.read_coco({**base, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5]},
                                                 {"id": 2, "image_id": 1, "category_id": 1, "bbox": [12, 0, 3, 3]}]})
    np.testing.assert_array_equal(ds.images[0].boxes, [[8, 8, 10, 10]])  # clipped; the one fully outside dropped
    assert any("clipped" in w for w in ds.warnings) and any("dropped" in w for w in ds.warnings)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(AnnotationError, match="cannot read the COCO file"):
        coco.read_coco(bad)


@pytest.mark.parametrize("line, msg", [("0 0.5 0.5 0.2", "4 fields"), ("3 0.5 0.5 0.2 0.2", "class id 3"),
                                       ("0 0.5 x 0.2 0.2", "not numbers"), ("0 0.5 0.5 -0.2 0.2", "negative")])
def test_yolo_bad_lines(tmp_path, line, msg):
    make_images(tmp_path / "images", [("a.png", (10, 20), False)])
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.1 0.1\n" + line + "\n")
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    with pytest.raises(AnnotationError, match=msg) as e:
        yolo.read_yolo(tmp_path)
    assert "a.txt, line 2" in str(e.value)


def test_yolo_folder_data_yaml_and_missing_image(tmp_path):
    make_images(tmp_path / "images" / "train", [("a.png", (10, 20), False), ("bg.png", (10, 20), False)])
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.2\n")
    (tmp_path / "data.yaml").write_text("names:\n  0: RBC\n  1: white cell é\n", encoding="utf-8")
    ds = yolo.read_yolo(tmp_path)
    assert ds.class_names == ["RBC", "white cell é"]
    got = {a.image: a for a in ds.images}
    assert set(got) == {os.path.join("train", "a.png"), os.path.join("train", "bg.png")}  # bg: no boxes
    np.testing.assert_allclose(got[os.path.join("train", "a.png")].boxes, [[4, 5, 6, 15]])
    assert len(got[os.path.join("train", "bg.png")]) == 0
    (tmp_path / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(AnnotationError, match="no image gone"):
        yolo.read_yolo(tmp_path)


def test_csv_needs_its_columns_and_numbers(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("image,class,xmin,ymin,xmax\na,b,1,2,3\n")
    with pytest.raises(AnnotationError, match="missing"):
        csv_boxes.read_boxes_csv(p)
    p.write_text("image,class,xmin,ymin,xmax,ymax\na,b,1,2,x,4\n")
    with pytest.raises(AnnotationError, match="not a number"):
        csv_boxes.read_boxes_csv(p)


def test_detect_format_refuses_what_is_not_ours(tmp_path):
    (tmp_path / "x.xml").write_text("<svg/>")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty").mkdir()
    for p in ("x.xml", "x.csv", "empty", "nope.json"):
        with pytest.raises(AnnotationError):
            detect_format(tmp_path / p)


@pytest.mark.parametrize("fmt", ["coco", "yolo", "csv"])
def test_scores_survive(tmp_path, fmt):
    images = make_images(tmp_path / "images", [("smear 1.png", (48, 64), True), ("field_2.tif", (30, 50), False)])
    ds = sample_set()
    ds.images[0].scores = np.array([0.875, 0.125])
    ds.images[1].scores = np.array([0.5, 0.25, 1.0])
    write_annotations(ds, fmt, tmp_path / "o")
    back = read_annotations(tmp_path / "o" if fmt == "yolo" else next((tmp_path / "o").glob("*.*")), images=images)
    got = by_image(back)
    np.testing.assert_allclose(got["smear 1.png"].scores, [0.875, 0.125], atol=1e-6)
    np.testing.assert_allclose(got["field_2.tif"].scores, [0.5, 0.25, 1.0], atol=1e-6)


def test_whole_bccd_folder_reads_with_the_readme_counts(shared_data):
    ds = read_annotations(shared_data / "bccd")  # a dataset folder: annotations/*.xml beside images/
    assert len(ds) == 205 + 87  # train + val
    assert ds.n_boxes == 2805 + 1138 - 2  # less the zero-area boxes of BloodImage_00338 and _00343
    assert set(ds.class_names) == {"RBC", "WBC", "Platelets"}
    assert sorted(w.split(":")[0] for w in ds.warnings) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]


def test_yolo_flat_labels_find_images_in_sub_folders(tmp_path):
    """labels/a.txt (as `convert --to yolo` writes) pairs with images/train/a.png: one entry, not two."""
    make_images(tmp_path / "images" / "train", [("a.png", (10, 20), False), ("b.png", (10, 20), False)])
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.2\n")
    (tmp_path / "classes.txt").write_text("x\n")
    ds = yolo.read_yolo(tmp_path)
    assert [(a.image, len(a)) for a in ds.images] == [(os.path.join("train", "a.png"), 1),
                                                      (os.path.join("train", "b.png"), 0)]


def test_point_order_helpers():
    from napari_cnnvision.core.formats import points_from_xy, points_to_xy

    xy = np.array([[10.0, 2.0], [3.5, 7.0]])  # (x, y) = (column, row)
    np.testing.assert_array_equal(points_from_xy(xy), [[2, 10], [7, 3.5]])  # napari's (row, column)
    np.testing.assert_array_equal(points_to_xy(points_from_xy(xy)), xy)
    assert points_from_xy([]).shape == (0, 2)
