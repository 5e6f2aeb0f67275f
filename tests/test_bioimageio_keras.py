"""bioimage.io packages with Keras weights only (a plain semantic segmentation: one foreground
probability channel) run on the Segment path in the TensorFlow worker: the card picks the tf job,
the weights' sha256 is checked, and the plugin's seeded watershed makes the instances. The Keras
model is built in a TensorFlow subprocess; TensorFlow stays out of this process."""
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_cnnvision.core.registry import CorruptModel, read_card

#: a 3x3 conv whose centre tap maps the normalized image x to sigmoid(20 x - 10): foreground = bright
BUILD = textwrap.dedent("""
    import sys, warnings
    from pathlib import Path
    import numpy as np
    import tensorflow as tf
    folder = Path(sys.argv[1])
    inp = tf.keras.Input(shape=(None, None, 1))
    conv = tf.keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")
    model = tf.keras.Model(inp, conv(inp))
    k = np.zeros((3, 3, 1, 1), np.float32)
    k[1, 1] = 20.0
    conv.set_weights([k, np.array([-10.0], np.float32)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(folder / "weights.h5"))
    x = np.load(folder / "test_input.npy")
    xn = (x - x.min()) / (x.max() - x.min() + 1e-6)
    np.save(folder / "test_output.npy", model.predict(xn, verbose=0).astype(np.float32))
    print(tf.__version__)
""")

CENTRES = [(12, 12), (14, 46), (44, 20), (48, 50)]


def blobs(bg=1000.0, fg=1400.0) -> np.ndarray:
    img = np.full((64, 64), bg, np.float32)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in CENTRES:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = fg
    return img


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def keras_pkg(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keras") / "pkg"
    folder.mkdir()
    np.save(folder / "test_input.npy", blobs()[None, :, :, None])
    out = subprocess.run([sys.executable, "-c", BUILD, str(folder)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (folder / "README.md").write_text("A Keras test package.\n")
    space = {"min": 16, "step": 8}
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "Tiny Keras Blobs",
        "description": "a one-conv Keras network: foreground = bright blobs", "authors": [{"name": "Test Author"}],
        "cite": [{"text": "a test", "doi": "10.1000/xyz"}], "license": "MIT", "documentation": "README.md",
        "tags": ["nuclei"],
        "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"id": "y", "type": "space", "size": space},
                                          {"id": "x", "type": "space", "size": space},
                                          {"type": "channel", "channel_names": ["raw"]}],
                    "test_tensor": {"source": "test_input.npy", "sha256": _sha(folder / "test_input.npy")},
                    "preprocessing": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 0,
                                                                       "max_percentile": 100}}]}],
        "outputs": [{"id": "prob", "axes": [{"type": "batch"},
                                            *({"id": a, "type": "space", "size": {"tensor_id": "raw", "axis_id": a}}
                                              for a in ("y", "x")),
                                            {"type": "channel", "channel_names": ["foreground"]}],
                     "test_tensor": {"source": "test_output.npy", "sha256": _sha(folder / "test_output.npy")}}],
        "weights": {"keras_hdf5": {"source": "weights.h5", "sha256": _sha(folder / "weights.h5"),
                                   "tensorflow_version": out.stdout.strip().splitlines()[-1]}},
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def pool():
    from napari_cnnvision.worker import WorkerPool

    p = WorkerPool()
    yield p
    p.shutdown()


def test_a_keras_only_package_gets_the_tf_job(keras_pkg):
    """Quick card (YAML only) and validated card (bioimageio.spec) both name the tf worker's job;
    a package with torch-runnable weights keeps the torch job."""
    from napari_cnnvision.backends.bioimageio.package import framework_of_formats, package_card
    from napari_cnnvision.backends.dispatch import job_for
    from napari_cnnvision.worker.jobs import framework_of, resolve

    for card in (read_card(keras_pkg), package_card(keras_pkg, validate=True)):
        assert (card.backend, card.extra["bioimageio"]["weights"]) == ("bioimageio", ["keras_hdf5"])
        assert job_for(card, task="segment") == "bioimageio.predict_tf"
    assert framework_of("bioimageio.predict_tf") == "tf"
    assert resolve("bioimageio.predict_tf") is resolve("bioimageio.predict")
    assert framework_of_formats(["keras_hdf5", "torchscript"]) == "torch"
    assert framework_of_formats(["keras_hdf5"]) == "tf"
    assert "tensorflow" not in sys.modules


def test_api_segment_runs_a_keras_package_in_the_tf_worker(keras_pkg, pool, monkeypatch):
    """api.segment(image, model=PATH): the 4 blobs, each one object, by the seeded watershed, in the tf worker."""
    from napari_cnnvision import api

    monkeypatch.setattr(api, "_pool", pool)
    res = api.segment(blobs(), model=str(keras_pkg), isolated=True)
    assert set(pool.workers) == {"tf"}
    assert res.normalization["weights"] == "keras_hdf5"
    assert res.labels.max() == len(CENTRES) == len(np.unique(res.labels)) - 1
    for cy, cx in CENTRES:  # each blob is one object, the background none
        assert res.labels[cy, cx] > 0
    assert len({int(res.labels[c]) for c in CENTRES}) == len(CENTRES)
    assert res.labels[0, 0] == 0 and res.labels[30, 32] == 0
    ref = blobs() > 1200
    assert ((res.labels > 0) == ref).mean() > 0.98
    assert "tensorflow" not in sys.modules


def test_models_add_and_segment_by_name(keras_pkg, pool, tmp_path):
    """`models add` installs a Keras-only package (sha256 checked); by name it runs in the tf worker."""
    from napari_cnnvision.backends.dispatch import job_for, run_model
    from napari_cnnvision.cli.models_cmd import add_package
    from napari_cnnvision.core.registry import ModelRegistry

    reg = ModelRegistry(user_dir=tmp_path / "user")
    card = add_package(keras_pkg, "keras-blobs", registry=reg)
    assert job_for(card, task="segment") == "bioimageio.predict_tf"
    res = run_model(blobs(), card, pool=pool, task="segment")
    assert res.labels.max() == len(CENTRES)


def test_a_tampered_keras_package_is_refused(keras_pkg, pool, tmp_path):
    """Weights that do not match their sha256 are not loaded (in this process and in the worker)."""
    import shutil

    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.cli.models_cmd import add_package
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.worker import JobError

    bad = tmp_path / "bad"
    shutil.copytree(keras_pkg, bad)
    (bad / "weights.h5").write_bytes((bad / "weights.h5").read_bytes() + b"tampered")
    card = read_card(bad)
    with pytest.raises(CorruptModel, match="keras_hdf5 weights file weights.h5 does not match its sha256"):
        run_model(blobs(), card, task="segment")
    with pytest.raises(JobError, match="does not match its sha256"):
        run_model(blobs(), card, pool=pool, task="segment")
    reg = ModelRegistry(user_dir=tmp_path / "user")
    with pytest.raises(CorruptModel, match="does not match its sha256"):
        add_package(bad, registry=reg)
    assert not (tmp_path / "user" / "tiny-keras-blobs").exists()
    assert "tensorflow" not in sys.modules
