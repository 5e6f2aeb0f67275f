"""`make demo`'s two paths: napari with the widgets and a result, and the headless CLI demo."""
import subprocess
import sys
from pathlib import Path

import numpy as np

CLI = str(Path(sys.executable).with_name("napari-cnnvision"))


def test_gui_demo_shows_segmentation(qtbot):
    from napari_cnnvision.demo import main

    viewer, seg = main(run=True)
    try:
        assert "Segment (napari-cnnvision)" in viewer.window._dock_widgets
        qtbot.waitUntil(lambda: not seg.runner.running, timeout=180000)
        result = viewer.layers["nuclei_2d [nuclei-stardist]"]
        assert len(np.unique(result.data)) > 50, seg.status.value
        assert len(result.features) == len(np.unique(result.data)) - 1
    finally:
        viewer.close()


def test_headless_demo_writes_outputs(tmp_path):
    import tifffile
    from skimage.io import imread

    out = subprocess.run([CLI, "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = tifffile.imread(tmp_path / "nuclei_2d_labels.tif")
    n = len(np.unique(labels)) - 1
    assert n > 50
    rows = (tmp_path / "nuclei_2d_objects.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == n
    png = imread(tmp_path / "nuclei_2d_preview.png")
    assert png.shape == labels.shape + (3,)
