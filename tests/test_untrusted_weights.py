"""A weights.pt that is a pickle of an object whose ``__reduce__`` runs code never runs it.

The payload writes a marker file when unpickled. Loading the detector or localizer folder that
holds it (directly, through ``api.detect`` / ``api.localize`` and through the CLI) gives a clear
``CorruptModel`` error, the marker never appears, and every ``torch.load`` the plugin made was
``weights_only=True`` -- while the same file loaded without that flag does run the payload.
"""
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_cnnvision import api  # noqa: E402
from napari_cnnvision.backends.detection.models import build_detector, load_detector, save_detector  # noqa: E402
from napari_cnnvision.backends.localizer import io as lio  # noqa: E402
from napari_cnnvision.backends.localizer.model import LocalizerConfig, build_localizer  # noqa: E402
from napari_cnnvision.cli.main import main  # noqa: E402
from napari_cnnvision.core.registry import CorruptModel, read_card  # noqa: E402


class _Payload:
    """Unpickling this calls ``exec`` on code that writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the pickle ran code')",))


def _write_payloads(path, marker, kind):
    if kind == "torch_save":  # the zip format torch.save writes, a payload inside a state_dict
        torch.save({"layer.weight": torch.zeros(2), "layer.bias": _Payload(marker)}, path)
    elif kind == "plain_pickle":  # the legacy (non-zip) format: a bare pickle
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    else:
        raise AssertionError(kind)


@pytest.fixture
def torch_load_calls(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def _detector_folder(tmp_path):
    cfg = {"arch": "yolo", "widths": [8, 16, 16, 32], "depths": [0, 1, 0, 0], "stride": 4, "head_channels": 16,
           "classes": ["a", "b"], "in_channels": 3, "input_size": 64}
    return save_detector(build_detector(cfg), cfg, tmp_path / "evil-detector")


def _localizer_folder(tmp_path):
    cfg = LocalizerConfig(n_classes=2, input_size=(32, 48), widths=(4, 8, 8))
    return lio.save_model(tmp_path / "evil-localizer", build_localizer(cfg), cfg, ["a", "b"])


@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle"])
def test_the_payload_is_real(tmp_path, kind):
    """Guard for the tests below: without weights_only the file does run code."""
    marker = tmp_path / "ran.txt"
    _write_payloads(tmp_path / "weights.pt", marker, kind)
    try:
        torch.load(tmp_path / "weights.pt", weights_only=False)
    except Exception:  # noqa: BLE001 - the payload returns None, which is no state_dict: that is fine here
        pass
    assert marker.read_text() == "the pickle ran code"


@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle"])
def test_untrusted_detector_weights_never_run(tmp_path, kind, torch_load_calls, capsys):
    folder = _detector_folder(tmp_path)
    marker = tmp_path / "ran.txt"
    _write_payloads(folder / "weights.pt", marker, kind)
    with pytest.raises(CorruptModel, match="never loaded") as e:
        load_detector(folder)
    assert "weights.pt" in str(e.value) and str(folder) in str(e.value)
    with pytest.raises(CorruptModel, match="never loaded"):
        api.detect(np.zeros((64, 64, 3), np.uint8), model=read_card(folder), isolated=False)
    img = tmp_path / "img.png"
    import imageio.v3 as iio

    iio.imwrite(img, np.zeros((64, 64, 3), np.uint8))
    rc = main(["detect", str(img), "--out", str(tmp_path / "out"), "--model", str(folder), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "never loaded" in err
    assert not marker.exists()
    assert torch_load_calls and all(w is True for w in torch_load_calls)


@pytest.mark.parametrize("kind", ["torch_save", "plain_pickle"])
def test_untrusted_localizer_weights_never_run(tmp_path, kind, torch_load_calls):
    folder = _localizer_folder(tmp_path)
    marker = tmp_path / "ran.txt"
    _write_payloads(folder / "weights.pt", marker, kind)
    lio.clear_cache()
    with pytest.raises(CorruptModel, match="never loaded") as e:
        lio.load_model(folder)
    assert "weights.pt" in str(e.value) and str(folder) in str(e.value)
    with pytest.raises(CorruptModel, match="never loaded"):
        api.localize(np.zeros((32, 48, 3), np.uint8), model=read_card(folder), isolated=False)
    assert not marker.exists()
    assert torch_load_calls and all(w is True for w in torch_load_calls)
