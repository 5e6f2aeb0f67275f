"""The Python API: in-process by default, isolated when the other framework is loaded."""
import subprocess
import sys

import numpy as np
import pytest
from stardist_helpers import make_tiny_stardist

CODE = r"""
import sys, numpy as np
import torch, torchvision  # a torch user's session
from napari_cnnvision import api
from napari_cnnvision.sample_data import load_sample
img = load_sample("nuclei_2d")[:128, :128]
res = api.segment(img, sys.argv[1], prob_thresh=0.3)
assert res.labels.shape == img.shape
print("tensorflow-in-process", "tensorflow" in sys.modules)
"""


def test_api_isolates_tensorflow_from_torch(tmp_path):
    model = make_tiny_stardist(tmp_path)
    out = subprocess.run([sys.executable, "-c", CODE, str(model)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tensorflow-in-process False" in out.stdout


def test_api_default_model_error_is_clear(tmp_path, monkeypatch):
    from napari_cnnvision import api
    from napari_cnnvision.core.registry import ModelNotFound, ModelRegistry

    empty = ModelRegistry(user_dir=tmp_path / "u", shipped_dir=tmp_path / "s")
    with pytest.raises(ModelNotFound):
        api.segment(np.zeros((32, 32)), "nope", registry=empty)


def test_api_uses_the_card_normalization_and_passes_stitch_z(tmp_path):
    """api.segment: pmin/pmax None = the card's normalization; explicit ones override it; stitch_z and
    axes reach the backend (a tiny untrained U-Net in this process)."""
    pytest.importorskip("torch")
    from napari_cnnvision import api
    from napari_cnnvision.backends.unet.io import save_model
    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet

    cfg = UNetConfig(depth=1, base_filters=4)
    folder = save_model(tmp_path / "tiny-unet", build_unet(cfg), cfg, pmin=0.0, pmax=100.0)
    vol = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    res = api.segment(vol, str(folder), axes="ZYX", stitch_z=True, isolated=False)
    assert res.normalization == {"type": "percentile", "pmin": 0.0, "pmax": 100.0, "source": "card"}
    assert res.labels.shape == vol.shape and res.frames == [0, 1, 2]
    assert any("slice by slice" in w and "stitched" in w for w in res.warnings)
    res = api.segment(vol, str(folder), pmin=2.0, pmax=98.0, isolated=False)
    assert res.normalization == {"type": "percentile", "pmin": 2.0, "pmax": 98.0, "source": "caller"}
    assert "frame" in res.table and not any("slice by slice" in w for w in res.warnings)  # guessed: T


def test_annotations_through_the_api(tmp_path):
    """The Python API reads and writes annotation formats with the same code as the CLI and napari."""
    import numpy as np
    import tifffile

    from napari_cnnvision import api
    from napari_cnnvision.core.formats.annotations import AnnotationSet, ImageAnnotations

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((40, 50), np.uint8))
    ds = AnnotationSet([ImageAnnotations("a.tif", (40, 50), np.array([[1.0, 2.0, 11.0, 22.0]]), ["white cell é"])],
                       ["white cell é"])
    written = api.write_annotations(ds, "coco", tmp_path / "coco")
    assert written and all(p.exists() for p in written)
    back = api.read_annotations(tmp_path / "coco" / "annotations.json", images=tmp_path)
    np.testing.assert_allclose(back.images[0].boxes, [[1, 2, 11, 22]])
    assert back.images[0].classes == ["white cell é"]


def test_api_export_model_writes_a_valid_package_in_the_worker(tmp_path, pool, monkeypatch):
    """api.export_model runs the export job in the torch worker (not here) and writes a package
    that bioimageio.spec validates and whose test tensors pass; an existing folder and a model
    of another kind are clear refusals."""
    pytest.importorskip("torch")
    pytest.importorskip("bioimageio.spec")
    from napari_cnnvision import api
    from napari_cnnvision.backends.unet.io import save_model
    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet
    from napari_cnnvision.core.registry import CorruptModel, ModelRegistry, read_card
    from napari_cnnvision.sample_data import load_sample

    cfg = UNetConfig(depth=1, base_filters=4)
    save_model(ModelRegistry().user_dir / "tiny-unet", build_unet(cfg), cfg, pmin=0.0, pmax=100.0)
    monkeypatch.setattr(api, "_pool", pool)
    out = api.export_model("tiny-unet", tmp_path / "pkg", test_image=np.asarray(load_sample("nuclei_2d"))[:64, :72])
    assert out == tmp_path / "pkg"
    assert "torch" in pool.workers  # the job ran in the compute worker
    # (the export validated the package and ran its test tensors before writing it; test_bioimageio checks again)
    assert (out / "test_input.npy").is_file() and (out / "test_output.npy").is_file()
    card = read_card(out, "path")
    assert card.backend == "bioimageio" and card.task == "segment"
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CorruptModel, match="exists already"):
        api.export_model("tiny-unet", out)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    with pytest.raises(CorruptModel, match="only U-Net and 2-D StarDist"):
        api.export_model(ModelRegistry().get("wbc-localizer"), tmp_path / "loc")
    assert not (tmp_path / "loc").exists()
