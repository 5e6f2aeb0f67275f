"""Importing the plugin and loading its manifest must not import the heavy frameworks."""
import json
import subprocess
import sys

CODE = r"""
import json, sys, time
t = time.perf_counter()
import napari_cnnvision, napari_cnnvision.api, napari_cnnvision.cli.main
import napari_cnnvision.worker, napari_cnnvision.layers, napari_cnnvision.backends.dispatch
import napari_cnnvision.backends.stardist.predict
from npe2 import PluginManifest
pm = PluginManifest.from_distribution("napari-cnnvision")
for c in pm.contributions.commands:
    mod = c.python_name.split(":")[0]
    __import__(mod)
heavy = [m for m in ("tensorflow", "torch", "torchvision", "stardist", "keras", "bioimageio.spec", "bioimageio.core",
                      "onnxruntime", "distributed", "zarr", "matplotlib", "xarray") if m in sys.modules]
print(json.dumps({"heavy": heavy, "commands": len(pm.contributions.commands)}))
"""


def test_import_and_manifest_do_not_load_frameworks():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["heavy"] == []
    assert res["commands"] >= 5
