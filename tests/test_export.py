"""Dataset export (the Export widget's backend): images + annotations per format, split, manifest."""
import numpy as np
import pytest
import yaml

from napari_cnnvision.core.formats.annotations import ImageAnnotations, read_annotations
from napari_cnnvision.core.formats.export import MANIFEST, ExportItem, export_dataset, split_names
from napari_cnnvision.core.formats.voc import AnnotationError

CLASSES = ["RBC", "white cell é"]


def items():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:10, 5:20] = 255
    stack = np.arange(3 * 16 * 24, dtype=np.float32).reshape(3, 16, 24)
    lab = np.zeros((3, 16, 24), np.uint16)
    lab[2, 1:5, 2:8] = 7
    a = ImageAnnotations("smear.png", (20, 30), [[5, 5, 10, 20]], ["white cell é"])
    b = ImageAnnotations("movie", (16, 24), [[1, 2, 5, 8], [0, 0, 4, 4], [3, 3, 9, 9]], ["RBC", "RBC", "white cell é"],
                         frame=[2, 0, 2])
    return [ExportItem(rgb, a, rgb=True), ExportItem(stack, b, frames=True)], lab


@pytest.mark.parametrize("fmt", ["yolo", "coco", "voc"])
def test_export_reads_back(tmp_path, fmt):
    its, _ = items()
    res = export_dataset(its, tmp_path / "ds", fmt, CLASSES)
    assert res["images"] == 4 and res["boxes"] == 4  # the stack: one image per frame
    assert (tmp_path / "ds" / "images" / "movie_t0002.png").is_file()
    src = tmp_path / "ds" / ("annotations.json" if fmt == "coco" else "")
    back = {a.image.split("/")[-1]: a for a in read_annotations(src).images}
    assert set(back) == {"smear.png", "movie_t0000.png", "movie_t0001.png", "movie_t0002.png"}
    np.testing.assert_allclose(back["movie_t0002.png"].boxes, [[1, 2, 5, 8], [3, 3, 9, 9]], atol=1e-4)
    assert back["movie_t0002.png"].classes == ["RBC", "white cell é"] and len(back["movie_t0001.png"]) == 0
    assert back["smear.png"].size == (20, 30)
    text = (tmp_path / "ds" / MANIFEST).read_text(encoding="utf-8")
    assert "images: 4" in text and "white cell é 2" in text


def test_yolo_split_and_data_yaml(tmp_path):
    its, _ = items()
    res = export_dataset(its, tmp_path / "ds", "yolo", CLASSES, val_fraction=0.25, seed=3)
    assert res["splits"] == {"train": 3, "val": 1}
    d = yaml.safe_load((tmp_path / "ds" / "data.yaml").read_text(encoding="utf-8"))
    assert d["names"] == {0: "RBC", 1: "white cell é"} and d["train"] == "images/train"
    assert len(list((tmp_path / "ds" / "images" / "val").iterdir())) == 1
    assert len(list((tmp_path / "ds" / "labels" / "train").iterdir())) == 3
    assert len(read_annotations(tmp_path / "ds")) == 4


def test_masks_export_and_a_failed_export_keeps_the_old_folder(tmp_path):
    its, lab = items()
    its[1].ann.labels = lab
    its[0].ann.labels = np.zeros((20, 30), np.uint16)
    export_dataset(its, tmp_path / "ds", "masks", CLASSES)
    ds = read_annotations(tmp_path / "ds")
    got = {a.image: a for a in ds.images}
    np.testing.assert_array_equal(got["movie_t0002.png"].boxes, [[1, 2, 5, 8]])
    before = sorted(p.name for p in (tmp_path / "ds").rglob("*"))
    bad = [ExportItem(np.zeros((4, 4, 5), np.uint8), ImageAnnotations("five", (4, 4)))]
    with pytest.raises(AnnotationError, match="neither grey nor RGB"):
        export_dataset(its + bad, tmp_path / "ds", "coco", CLASSES)
    assert sorted(p.name for p in (tmp_path / "ds").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staged folder left


def test_split_names():
    assert split_names(5, 0) == [""] * 5
    s = split_names(10, 0.2, seed=1)
    assert s.count("val") == 2 and s == split_names(10, 0.2, seed=1)
    assert split_names(2, 0.1).count("val") == 1  # at least one of each
    with pytest.raises(ValueError):
        split_names(3, 1.5)


def test_a_stopped_export_keeps_the_old_folder(tmp_path):
    from napari_cnnvision.core.progress import Cancelled, RecordingProgress

    its, _ = items()
    export_dataset(its[:1], tmp_path / "ds", "voc", CLASSES)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(Cancelled):
        export_dataset(its, tmp_path / "ds", "voc", CLASSES, progress=RecordingProgress(stop_after=2))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
