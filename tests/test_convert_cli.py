"""``napari-cnnvision convert``: real BCCD VOC files to COCO and back; refusals before writing."""
import json
import shutil

import numpy as np
import pytest

from napari_cnnvision.cli.main import main
from napari_cnnvision.core.formats.voc import read_voc

BCCD = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00343"]  # 00343: a zero-area RBC box


@pytest.fixture
def bccd_voc(shared_data, tmp_path):
    """A few real BCCD annotations (and their images) in a dataset-like folder."""
    root = tmp_path / "bccd"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for s in BCCD:
        shutil.copy(shared_data / "bccd" / "annotations" / f"{s}.xml", root / "annotations")
        shutil.copy(shared_data / "bccd" / "images" / f"{s}.jpg", root / "images")
    return root


def test_bccd_voc_to_coco_and_back(bccd_voc, tmp_path, capsys):
    assert main(["convert", str(bccd_voc / "annotations"), "--to", "coco", "--out", str(tmp_path / "coco")]) == 0
    out, err = capsys.readouterr()
    assert "BloodImage_00343.xml: 1 box(es) with zero width or height dropped" in err
    d = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [i["file_name"] for i in d["images"]] == [f"{s}.jpg" for s in BCCD]
    assert {(i["width"], i["height"]) for i in d["images"]} == {(640, 480)}
    originals = {s: read_voc(bccd_voc / "annotations" / f"{s}.xml") for s in BCCD}
    n = sum(len(a) for a in originals.values())
    assert originals["BloodImage_00343"].dropped == 1 and len(d["annotations"]) == n
    assert f"3 images, {n} boxes" in out and "RBC" in out
    assert main(["convert", str(tmp_path / "coco" / "annotations.json"), "--to", "voc",
                 "--out", str(tmp_path / "voc")]) == 0
    for s, a in originals.items():
        b = read_voc(tmp_path / "voc" / f"{s}.xml")
        np.testing.assert_array_equal(b.boxes, a.boxes)
        assert b.classes == a.classes and b.shape == (480, 640)
    # and on to YOLO (sizes from the images) and back to VOC: nothing lost
    # VOC has the sizes: no --images needed for YOLO; reading YOLO back needs the images
    assert main(["convert", str(tmp_path / "voc"), "--to", "yolo", "--out", str(tmp_path / "yolo")]) == 0
    assert main(["convert", str(tmp_path / "yolo"), "--to", "voc", "--out", str(tmp_path / "voc2")]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "yolo"), "--to", "voc", "--out", str(tmp_path / "voc2"),
                 "--images", str(bccd_voc / "images")]) == 0
    for s, a in originals.items():
        b = read_voc(tmp_path / "voc2" / f"{s}.xml")
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        assert b.classes == a.classes


def test_refusals_write_nothing(bccd_voc, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", str(bccd_voc / "annotations"), "--to", "csv", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert main(["convert", str(bccd_voc / "annotations"), "--to", "csv", "--out", str(out), "--force"]) == 0
    assert (out / "boxes.csv").is_file() and (out / "keep.txt").read_text() == "mine"
    # VOC into its own folder: it would overwrite the source, even with --force
    before = (bccd_voc / "annotations" / "BloodImage_00343.xml").read_bytes()
    assert main(["convert", str(bccd_voc / "annotations"), "--to", "voc", "--out", str(bccd_voc / "annotations"),
                 "--force"]) == 2
    assert "overwrite the source" in capsys.readouterr().err
    assert (bccd_voc / "annotations" / "BloodImage_00343.xml").read_bytes() == before


def test_csv_to_yolo_needs_the_images(tmp_path, capsys):
    src = tmp_path / "b.csv"
    src.write_text("image,class,xmin,ymin,xmax,ymax,score\na.png,white cell é,1,2,11,12,0.5\n", encoding="utf-8")
    assert main(["convert", str(src), "--to", "yolo", "--out", str(tmp_path / "y")]) == 2
    assert "--images" in capsys.readouterr().err and not (tmp_path / "y").exists()
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "imgs" / "a.png")
    assert main(["convert", str(src), "--to", "yolo", "--out", str(tmp_path / "y"),
                 "--images", str(tmp_path / "imgs")]) == 0
    assert (tmp_path / "y" / "classes.txt").read_text(encoding="utf-8") == "white cell é\n"
    line = (tmp_path / "y" / "labels" / "a.txt").read_text().split()
    assert line == ["0", "0.150000", "0.350000", "0.250000", "0.500000", "0.500000"]  # cx cy w h score


def test_unreadable_source_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "a.json"
    bad.write_text("{not json")
    assert main(["convert", str(bad), "--to", "voc", "--out", str(tmp_path / "o")]) == 2
    assert "cannot read the COCO file" in capsys.readouterr().err
