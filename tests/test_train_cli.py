"""``napari-cnnvision train``: a tiny U-Net trained from folders in the compute worker is usable by name
at once; bad inputs are one-line errors with a non-zero exit code and nothing written."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from test_training_data import disks

from napari_cnnvision.cli.main import main
from napari_cnnvision.core.registry import ModelRegistry

TINY = ["--setting", "depth=2", "--setting", "base_filters=4", "--setting", "steps_per_epoch=2",
        "--setting", "batch_size=2", "--setting", "patch_size=32", "--setting", "seed_grid=[0.5]"]


def _data(tmp_path):
    img_dir, mask_dir = tmp_path / "images", tmp_path / "masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    for k, centres in enumerate([[(12, 12), (30, 40), (50, 20)], [(15, 45), (45, 45)]]):
        img, lab = disks(centres, shape=(64, 64))
        tifffile.imwrite(img_dir / f"cell{k}.tif", (img * 100 + 50).clip(0, 255).astype(np.uint8))
        tifffile.imwrite(mask_dir / f"cell{k}.tif", lab.astype(np.uint16))
    return img_dir, mask_dir


def test_train_a_tiny_unet_from_folders_then_segment_with_it_by_name(tmp_path, capsys):
    img_dir, mask_dir = _data(tmp_path)
    rc = main(["train", "segment", "--name", "tiny", "--images", str(img_dir), "--masks", str(mask_dir),
               "--epochs", "1", "--val-fraction", "0.5", *TINY])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "saved model 'tiny' (1 epoch(s)" in out.out and "validation: ap@0.5" in out.out
    card = ModelRegistry().get("tiny")
    assert card.task == "segment" and card.backend == "unet" and card.source == "user"
    assert "folders: cell0.tif; cell1.tif" in card.training["data"] and card.training["epochs"] == 1
    assert card.training["settings"]["depth"] == 2
    # usable by name at once
    rc = main(["segment", str(img_dir), "--model", "tiny", "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0 and (tmp_path / "out" / "cell0.tif").is_file()
    # the same name again is refused before anything is read or trained; the model is untouched
    weights = sorted(p.name for p in (ModelRegistry().user_dir / "tiny").iterdir())
    stamp = (ModelRegistry().user_dir / "tiny" / "model.json").stat().st_mtime_ns
    rc = main(["train", "segment", "--name", "tiny", "--images", str(img_dir), "--masks", str(mask_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "a model named 'tiny' exists already" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (ModelRegistry().user_dir / "tiny").iterdir()) == weights
    assert (ModelRegistry().user_dir / "tiny" / "model.json").stat().st_mtime_ns == stamp


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    img_dir, mask_dir = _data(tmp_path)
    base = ["train", "segment", "--name", "new-one", "--images", str(img_dir)]
    with pytest.raises(SystemExit) as e:  # both: argparse refuses
        main(base + ["--masks", str(mask_dir), "--annotations", str(mask_dir)])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    cases = [
        (base, "give the annotations: --masks DIR"),  # neither
        (["train", "segment", "--name", "nuclei-unet", "--images", str(img_dir), "--masks", str(mask_dir)],
         "a model named 'nuclei-unet' exists already"),  # a shipped name
        (["train", "segment", "--name", "new-one", "--images", str(tmp_path / "nope"), "--masks", str(mask_dir)],
         "does not exist"),
        (base + ["--annotations", str(tmp_path / "none.json")], "do not exist"),
        (base + ["--masks", str(mask_dir), "--format", "coco"], "--format goes with --annotations"),
        (base + ["--masks", str(mask_dir), "--base", "bloodcells-yolo"], "is a detect model, not a segment model"),
        (base + ["--masks", str(mask_dir), "--upsampling", "cubic"], "upsampling must be one of"),
        (base + ["--masks", str(mask_dir), "--val-images", str(img_dir)], "--val-images DIR with --val-masks"),
        (base + ["--masks", str(mask_dir), "--val-masks", str(mask_dir)], "--val-images DIR with --val-masks"),
        (base + ["--masks", str(mask_dir), "--val-images", str(img_dir), "--val-masks", str(mask_dir),
                 "--val-fraction", "0.3"], "leave out one of them"),
        (base + ["--masks", str(mask_dir), "--val-images", str(tmp_path / "nope"), "--val-masks", str(mask_dir)],
         "validation data: the images folder"),
    ]
    for argv, message in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit) as e:  # an unknown format
        main(base + ["--annotations", str(mask_dir), "--format", "xml"])
    assert e.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    assert not (ModelRegistry().user_dir / "new-one").exists()


def test_the_ctrl_c_handler_is_restored_even_when_the_former_one_was_not_pythons():
    """After a run the SIGINT handler is a Python one again (an in-process `train` left its own
    installed when the former handler had been set outside Python, so a later Ctrl-C only
    printed 'stopping after this epoch')."""
    import signal

    from napari_cnnvision.cli.train import _StopOnInterrupt

    class P:
        stop_flag = False

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        with _StopOnInterrupt(P()):
            assert signal.getsignal(signal.SIGINT) not in (signal.SIG_DFL, signal.default_int_handler)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        with _StopOnInterrupt(P()) as guard:
            guard.old = None  # what signal.signal returns when the former handler was not installed from Python
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_validation_folders_replace_the_split(tmp_path, capsys, monkeypatch):
    from napari_cnnvision import api
    from napari_cnnvision.core.axes import InputError

    img_dir, mask_dir = _data(tmp_path)
    val_dir = tmp_path / "val"
    (val_dir / "images").mkdir(parents=True)
    (val_dir / "masks").mkdir()
    img, lab = disks([(20, 20), (40, 44)], shape=(64, 64))
    tifffile.imwrite(val_dir / "images" / "v.tif", (img * 100 + 50).clip(0, 255).astype(np.uint8))
    tifffile.imwrite(val_dir / "masks" / "v.tif", lab.astype(np.uint16))
    seen = []

    class _Pool:  # the request only: no worker
        def run(self, job, kwargs, **_):
            seen.append(kwargs)
            raise InputError("stopped before training")

    monkeypatch.setattr(api, "_worker_pool", lambda: _Pool())
    rc = main(["train", "segment", "--name", "new-one", "--images", str(img_dir), "--masks", str(mask_dir),
               "--val-images", str(val_dir / "images"), "--val-masks", str(val_dir / "masks"), "--quiet"])
    assert rc == 2 and "stopped before training" in capsys.readouterr().err
    k = seen[0]
    assert sorted(c.shape for c in k["images"]) == [(64, 64), (64, 64)]  # both training images whole
    assert len(k["val_images"]) == 1 and int(k["val_masks"][0].max()) == 2
    assert "validation: 1 pair of its own (v.tif)" in k["data"]
