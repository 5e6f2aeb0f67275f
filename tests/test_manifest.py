"""The npe2 manifest is found in editable and regular (wheel) installs."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

NPE2 = Path(sys.executable).with_name("npe2")


def test_npe2_validate_editable_install():
    out = subprocess.run([str(NPE2), "validate", "napari-cnnvision"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


def test_npe2_validate_regular_install(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("napari_cnnvision-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_cnnvision/napari.yaml" in names
    manifest = zipfile.ZipFile(wheel).read("napari_cnnvision/napari.yaml").decode()
    assert manifest == (ROOT / "napari.yaml").read_text()  # a real file in the wheel, not a link
    target = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import napari_cnnvision; print(napari_cnnvision.__file__)"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert str(target) in where.stdout  # the wheel's copy is the one imported
    out = subprocess.run([str(NPE2), "validate", "napari-cnnvision"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
