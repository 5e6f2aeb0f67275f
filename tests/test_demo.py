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
        assert "Segment (napari-cnnvision)" in viewer.window.dock_widgets
        qtbot.waitUntil(lambda: not seg.runner.running, timeout=180000)
        result = viewer.layers["nuclei_2d [nuclei-stardist]"]
        assert len(np.unique(result.data)) > 50, seg.status.value
        assert len(result.features) == len(np.unique(result.data)) - 1
    finally:
        viewer.close()


def _labels_and_table(folder):
    """The demo's label TIFF (over 50 nuclei) and its CSV (one row per nucleus); returns the labels."""
    import tifffile

    labels = tifffile.imread(folder / "nuclei_2d_labels.tif")
    n = len(np.unique(labels)) - 1
    assert n > 50
    rows = (folder / "nuclei_2d_objects.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == n
    return labels


def test_headless_demo_writes_outputs(tmp_path):
    from skimage.io import imread

    out = subprocess.run([CLI, "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = _labels_and_table(tmp_path)
    png = imread(tmp_path / "nuclei_2d_preview.png")
    assert png.shape == labels.shape + (3,)


def test_gui_demo_to_files_writes_a_window_screenshot(tmp_path):
    """`make demo` without a display: the real napari window (on this test's Xvfb display) into files."""
    import os

    from PIL import Image

    assert os.environ.get("DISPLAY"), "pytest-xvfb provides the display"
    out = subprocess.run([sys.executable, "-m", "napari_cnnvision.demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    _labels_and_table(tmp_path)
    shot = np.asarray(Image.open(tmp_path / "nuclei_2d_screenshot.png").convert("RGB"))
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000  # the whole window, not just the canvas
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # widgets and coloured labels, not a blank frame
