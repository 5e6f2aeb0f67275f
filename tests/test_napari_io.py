"""npe2 readers and writers of annotations, directly and through napari (make_napari_viewer)."""
import json
import shutil
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cnnvision.core.formats import coco, voc, yolo
from napari_cnnvision.io_napari import get_reader

PLUGIN = "napari-cnnvision"


def small_coco(folder, polygon=False):
    """``folder/annotations.json`` over ``folder/images/a.png`` (24 x 32, RGB) with 2 boxes."""
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(folder / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5], "score": 0.75},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 8, 12], "score": 0.5}]
    if polygon:
        anns[1]["segmentation"] = [[20, 10, 28, 10, 28, 22, 20, 22]]
    d = {"images": [{"id": 1, "file_name": "a.png", "height": 24, "width": 32}],
         "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "white cell é"}], "annotations": anns}
    p = folder / "annotations.json"
    p.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    return p


def test_reader_gives_shapes_with_classes_scores_and_the_image(tmp_path):
    p = small_coco(tmp_path)
    reader = get_reader(str(p))
    assert callable(reader)
    layers = reader(str(p))
    kinds = [t for _, _, t in layers]
    assert kinds == ["image", "shapes"]
    assert layers[0][0].shape == (24, 32, 3)
    data, kw, _ = layers[1]
    assert len(data) == 2
    # COCO [x=2, y=3, w=10, h=5] -> rows 3..8, columns 2..12 in napari's (row, col) order
    np.testing.assert_array_equal(data[0], [[3, 2], [3, 12], [8, 12], [8, 2]])
    assert list(kw["features"]["class"]) == ["RBC", "white cell é"]
    np.testing.assert_allclose(kw["features"]["score"], [0.75, 0.5])


def test_coco_polygon_gives_a_labels_layer(tmp_path):
    p = small_coco(tmp_path, polygon=True)
    layers = get_reader(str(p))(str(p))
    (lab, _, t), = [ld for ld in layers if ld[2] == "labels"]
    want = np.zeros((24, 32), np.uint16)
    want[10:22, 20:28] = 2  # the second box's mask (label k + 1 = box k)
    np.testing.assert_array_equal(lab, want)


def make_yolo(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "images" / name)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.1\n")
    (tmp_path / "labels" / "b.txt").write_text("1 0.5 0.5 1 1\n")
    (tmp_path / "classes.txt").write_text("cell\nwhite cell é\n", encoding="utf-8")


def test_yolo_folder_reader(tmp_path):
    make_yolo(tmp_path)
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert [t for _, _, t in layers] == ["image", "shapes"]
    assert layers[0][0].shape == (2, 20, 40)  # two images: one stack, the image index first
    data, kw, _ = layers[1]
    np.testing.assert_allclose(data[0], [[0, 5, 10], [0, 5, 30], [0, 15, 30], [0, 15, 10]])
    np.testing.assert_allclose(data[2][:, 0], 1)  # b.png's box on the second plane
    assert list(kw["features"]["class"]) == ["cell", "white cell é", "white cell é"]
    assert list(kw["features"]["image"]) == ["a.png", "a.png", "b.png"]


def test_paths_that_are_not_ours_give_none(tmp_path):
    (tmp_path / "other.json").write_text('{"a": 1}')
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "page.xml").write_text("<html/>")
    (tmp_path / "pts.csv").write_text("index,axis-0,axis-1\n0,1,2\n")
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "folder").mkdir()
    for name in ("other.json", "bad.json", "page.xml", "pts.csv", "img.tif", "folder", "missing.json"):
        assert get_reader(str(tmp_path / name)) is None, name
    assert get_reader([str(tmp_path / "other.json"), str(tmp_path / "bad.json")]) is None


def test_napari_opens_a_coco_file_and_saves_it_back(make_napari_viewer, tmp_path):
    p = small_coco(tmp_path / "src")
    viewer = make_napari_viewer()
    viewer.open(str(p), plugin=PLUGIN)
    img, shapes = viewer.layers
    assert shapes.nshapes == 2 and list(shapes.features["class"]) == ["RBC", "white cell é"]
    shapes.add_rectangles(np.array([[1, 1], [5, 9]]))
    shapes.features.loc[2, "class"] = "RBC"
    out = tmp_path / "out.json"
    viewer.layers.selection = {img, shapes}
    written = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    assert written == [str(out)]
    back = coco.read_coco(out)
    a, = back.images
    assert a.image == "a.png" and a.size == (24, 32)
    np.testing.assert_allclose(a.boxes, [[3, 2, 8, 12], [10, 20, 22, 28], [1, 1, 5, 9]])
    assert a.classes == ["RBC", "white cell é", "RBC"]


# shared_data first: without the data the test is skipped before napari's viewer fixture is set up
def test_napari_opens_real_bccd_annotations(shared_data, make_napari_viewer, tmp_path):
    names = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00343"]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    for s in names:
        shutil.copy(shared_data / "bccd" / "annotations" / f"{s}.xml", tmp_path / "annotations")
        shutil.copy(shared_data / "bccd" / "images" / f"{s}.jpg", tmp_path / "images")
    want = [voc.read_voc(tmp_path / "annotations" / f"{s}.xml") for s in names]
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="BloodImage_00343.xml: 1 box"):
        viewer.open(str(tmp_path), plugin=PLUGIN)
    img, shapes = viewer.layers
    assert img.data.shape == (3, 480, 640, 3) and img.rgb
    assert shapes.nshapes == sum(len(a) for a in want)
    assert list(shapes.features["class"]) == [c for a in want for c in a.classes]
    assert set(shapes.features["class"].cat.categories) == {"RBC", "WBC", "Platelets"}
    # written back as a YOLO folder (a path without extension, image + shapes selected: npe2 picks the
    # folder writer); the reader's image names and sizes come back with it
    out = tmp_path / "yolo_out"
    viewer.layers.selection = {img, shapes}
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    (tmp_path / "yolo_out" / "images").symlink_to(tmp_path / "images")
    ds = yolo.read_yolo(out)
    for a, w in zip(ds.images, want):
        assert a.image == w.filename
        np.testing.assert_allclose(a.boxes, w.boxes, atol=1e-3)


def test_ellipse_is_written_as_its_bounding_box_with_a_warning(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 40), np.uint8), name="cells")
    layer = viewer.add_shapes([np.array([[2, 3], [2, 13], [12, 13], [12, 3]])], shape_type="rectangle",
                              features={"class": ["white cell é"]})
    layer.add_ellipses(np.array([[20, 25], [5, 8]]))  # centre (20, 25), radii 5, 8
    out = tmp_path / "boxes.csv"
    with pytest.warns(UserWarning, match="1 shape.*bounding boxes"):
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    text = out.read_text(encoding="utf-8").splitlines()
    assert text[0] == "image,class,xmin,ymin,xmax,ymax"
    assert text[1] == "Shapes,white cell é,3,2,13,12"
    assert text[2].split(",")[2:] == ["17", "15", "33", "25"]


def test_empty_shapes_layer_writes_a_valid_coco_file(make_napari_viewer, tmp_path):
    from pycocotools.coco import COCO

    viewer = make_napari_viewer()
    img = viewer.add_image(np.zeros((30, 40), np.uint8), name="cells")
    shapes = viewer.add_shapes(name="boxes")
    viewer.layers.selection = {img, shapes}
    out = tmp_path / "e.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    c = COCO(str(out))
    assert c.getAnnIds() == [] and c.loadImgs(c.getImgIds())[0]["width"] == 40


def test_labels_and_points_writers(tmp_path):
    from napari_cnnvision.core.formats.csv_boxes import read_points_csv
    from napari_cnnvision.io_napari import write_labels_coco, write_labels_tiff, write_points_csv

    lab = np.zeros((10, 12), np.int32)
    lab[1:4, 2:6] = 3
    lab[6:9, 6:11] = 80000
    write_labels_tiff(str(tmp_path / "l.tif"), lab, {"name": "l"})
    t = tifffile.imread(tmp_path / "l.tif")
    assert t.dtype == np.uint32 and (t == lab).all()
    write_labels_coco(str(tmp_path / "l.json"), lab, {"name": "l"})
    back = coco.read_coco(tmp_path / "l.json").images[0]
    np.testing.assert_array_equal(back.boxes, [[1, 2, 4, 6], [6, 6, 9, 11]])
    assert ((back.labels > 0) == (lab > 0)).all()
    import pandas as pd

    write_points_csv(str(tmp_path / "p.csv"), np.array([[1.5, 2.0], [3, 4]]),
                     {"name": "pts", "ndim": 2, "features": pd.DataFrame({"class": ["a b", "é"]})})
    d = read_points_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(d["points"], [[1.5, 2.0], [3, 4]])
    assert d["class"] == ["a b", "é"] and (tmp_path / "p.csv").read_text().splitlines()[1] == "pts,a b,2,1.5"


def test_points_csv_reader(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("image,class,x,y,score\na.png,WBC,10,2,0.5\na.png,RBC,3,4.5,0.25\n")
    (data, kw, t), = get_reader(str(p))(str(p))
    assert t == "points"
    np.testing.assert_allclose(data, [[2, 10], [4.5, 3]])  # (row, col)
    assert list(kw["features"]["class"]) == ["WBC", "RBC"]


def test_stack_shapes_write_frames(tmp_path):
    from napari_cnnvision.io_napari import write_shapes_voc, write_shapes_yolo

    stack = np.zeros((3, 20, 30), np.uint8)
    rects = [np.array([[0, 1, 1], [0, 1, 5], [0, 6, 5], [0, 6, 1]]), np.array([[2, 2, 2], [2, 2, 9], [2, 8, 9],
                                                                              [2, 8, 2]])]
    meta = {"name": "boxes", "shape_type": ["rectangle"] * 2, "ndim": 3, "features": {"class": ["A", "B"]}}
    written = write_shapes_yolo(str(tmp_path / "y"), [(stack, {"name": "movie"}, "image"), (rects, meta, "shapes")])
    assert sorted(p.split("/")[-1] for p in written) == ["classes.txt", "movie_t0000.txt", "movie_t0002.txt"]
    with pytest.raises(ValueError, match="one image"):
        write_shapes_voc(str(tmp_path / "v.xml"), [(stack, {"name": "movie"}, "image"), (rects, meta, "shapes")])
    assert not (tmp_path / "v.xml").exists()


def test_masks_folder_reader_gives_image_boxes_and_labels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "images" / "n1.png")
    lab = np.zeros((12, 16), np.uint16)
    lab[2:5, 3:7] = 9
    lab[8:11, 10:15] = 4
    tifffile.imwrite(tmp_path / "masks" / "n1.tif", lab)
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert [t for _, _, t in layers] == ["image", "shapes", "labels"]
    boxes = sorted(tuple(d.min(0)) + tuple(d.max(0)) for d in layers[1][0])
    assert boxes == [(2, 3, 5, 7), (8, 10, 11, 15)]
    np.testing.assert_array_equal(layers[2][0] > 0, lab > 0)


def test_coco_with_frames_opens_as_a_stack_and_writes_back(tmp_path):
    from napari_cnnvision.io_napari import write_shapes_coco

    d = {"images": [{"id": 1, "file_name": "movie.tif", "height": 20, "width": 30}],
         "categories": [{"id": 1, "name": "cell"}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "frame": 0},
                         {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 6, 7, 8], "frame": 4}]}
    p = tmp_path / "det.json"
    p.write_text(json.dumps(d))
    (data, kw, _), = get_reader(str(p))(str(p))
    assert kw["ndim"] == 3 and [s[0, 0] for s in data] == [0, 4]
    out = tmp_path / "back.json"
    write_shapes_coco(str(out), [(data, {**kw, "shape_type": ["rectangle"] * 2}, "shapes")])
    a, = coco.read_coco(out).images
    assert a.frame.tolist() == [0, 4] and a.size == (20, 30)
    np.testing.assert_allclose(a.boxes, [[2, 1, 6, 4], [6, 5, 14, 12]])


def test_napari_opens_a_yolo_folder(make_napari_viewer, tmp_path):
    make_yolo(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path), plugin=PLUGIN)
    img, shapes = viewer.layers
    assert img.data.shape == (2, 20, 40) and shapes.nshapes == 3 and shapes.ndim == 3
    assert list(shapes.features["class"]) == ["cell", "white cell é", "white cell é"]


def _blockwise_output(tmp_path, monkeypatch):
    """``segment BIG.tif --out DIR``'s block-wise output (``scaleout.large.segment_one``, the
    command's path) for a 1200 x 160 image of bright discs, with a threshold for the network."""
    from scipy import ndimage

    from napari_cnnvision import api
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.core.results import SegmentationResult
    from napari_cnnvision.scaleout.large import segment_one

    def segment(x, card, **kw):
        lab, n = ndimage.label(np.asarray(x) > 0.5)
        com = ndimage.center_of_mass(np.ones_like(lab), lab, range(1, n + 1))
        table = {"label": np.arange(1, n + 1), "area": np.bincount(lab.ravel())[1:].astype(float),
                 "centroid_y": np.array([c[0] for c in com]), "centroid_x": np.array([c[1] for c in com]),
                 "probability": np.ones(n)}
        return SegmentationResult(lab.astype(np.int32), table, card.name)

    monkeypatch.setattr(api, "segment", segment)
    img = np.zeros((1200, 160), np.uint16)
    yy, xx = np.mgrid[:1200, :160]
    for cy in range(30, 1200, 60):
        for cx in (40, 120):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = 1000
    tifffile.imwrite(tmp_path / "big.tif", img)
    out = tmp_path / "out"
    out.mkdir()
    table = segment_one(tmp_path / "big.tif", out / "big.zarr", out / "big.csv", ModelRegistry().get("nuclei-unet"),
                        block=512)
    assert len(table["label"]) == 40
    return out / "big.zarr", img


def test_the_blockwise_zarr_output_opens_as_lazy_multiscale_labels_with_its_table(tmp_path, monkeypatch):
    import zarr

    path, img = _blockwise_output(tmp_path, monkeypatch)
    root = zarr.open_group(str(path), mode="r")
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]] == ["0", "1"]  # a pyramid for viewing
    assert root["1"].shape == (600, 80)
    reader = get_reader(str(path))
    assert reader is not None
    (data, kw, kind), = reader(str(path))
    assert kind == "labels" and kw["name"] == "big" and kw["multiscale"] is True
    assert isinstance(data[0], zarr.Array) and data[0].shape == img.shape  # read lazily, not loaded
    lab = np.asarray(data[0])
    assert lab.max() == 40 and np.array_equal(lab > 0, img > 0)
    f = kw["features"]
    assert list(f["index"]) == list(f["label"]) == list(range(1, 41))
    assert f["area"].iloc[0] == np.count_nonzero(lab == 1)
    # not ours: a plain zarr array, an OME-Zarr image (no "image-label"), a folder of TIFFs
    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(4, 4), dtype=np.uint8, zarr_format=2)
    g = zarr.open_group(str(tmp_path / "image.zarr"), mode="w", zarr_format=2)
    g.attrs.update({"multiscales": [{"version": "0.4", "datasets": [{"path": "0"}]}]})
    for name in ("plain.zarr", "image.zarr"):
        assert get_reader(str(tmp_path / name)) is None, name
    (tmp_path / "out" / "big.csv").write_text("not,a\ntable")  # a table without labels: no features
    (_, kw, _), = get_reader(str(path))(str(path))
    assert "features" not in kw


def test_napari_opens_the_blockwise_zarr_output_as_labels(make_napari_viewer, tmp_path, monkeypatch):
    import napari

    path, img = _blockwise_output(tmp_path, monkeypatch)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1 and isinstance(layers[0], napari.layers.Labels)
    lyr = layers[0]
    assert lyr.multiscale and lyr.data[0].shape == img.shape and len(lyr.features) == 40
