import json
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).with_name("napari-cnnvision"))


def test_help_lists_commands():
    out = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("models", "segment", "evaluate", "demo"):
        assert cmd in out.stdout


def test_models_json_lists_sources(tmp_path, monkeypatch):
    from napari_cnnvision.core.registry import ModelCard, write_card

    user = tmp_path / "user-data" / "models" / "my-model"
    user.mkdir(parents=True)
    write_card(ModelCard("my-model", "detect", "yolo", ["RBC", "WBC"]), user)
    out = subprocess.run([CLI, "models", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    models = json.loads(out.stdout)
    by_name = {m["name"]: m for m in models}
    for m in models:
        assert set(m) == {"name", "task", "backend", "source", "classes", "path"}
    assert by_name["my-model"]["source"] == "user"
    assert by_name["my-model"]["classes"] == ["RBC", "WBC"]
    assert Path(by_name["my-model"]["path"]) == user
    assert by_name["2D_versatile_fluo"]["source"] == "pretrained"
    assert by_name["2D_versatile_fluo"]["path"] is None  # not downloaded in this isolated home


def test_unknown_model_is_a_clear_error(tmp_path):
    img = tmp_path / "a.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(img, np.zeros((32, 32), np.uint8))
    out = subprocess.run([CLI, "segment", str(img), "--out", str(tmp_path / "o"), "--model", "no-such-model"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no model named 'no-such-model'" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_flag_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from napari_cnnvision.cli import main as cli_main
    from napari_cnnvision.core import registry

    img = tmp_path / "a.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(img, np.zeros((8, 8), np.uint8))
    args = ["segment", str(img), "--out", str(tmp_path / "o"), "--model", "no-such-model"]
    assert cli_main.main(args) == 2
    err = capsys.readouterr().err
    assert "no model named 'no-such-model'" in err and "Traceback" not in err
    assert cli_main.main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelNotFound" in err and "no model named 'no-such-model'" in err

    def boom(self, *a, **k):  # an unexpected error
        raise RuntimeError("boom")

    monkeypatch.setattr(registry.ModelRegistry, "list", boom)
    assert cli_main.main(["models"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "napari-cnnvision: error: RuntimeError: boom"
    assert cli_main.main(["--debug", "models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise RuntimeError("boom")' in err
