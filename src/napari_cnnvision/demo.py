"""``python -m napari_cnnvision.demo``: napari with the plugin docked on the nuclei sample.

The default segmentation model runs in the compute worker as soon as the window is up,
and its Labels layer appears on the image.

``python -m napari_cnnvision.demo --out DIR`` does the same, waits for the result, writes
the label TIFF, the per-object CSV (the layer's ``features``) and a screenshot of the whole
napari window into ``DIR``, and quits. Without a display, run it under ``xvfb-run``
(``make demo`` does).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SAMPLE = "nuclei_2d"


def main(run: bool = True):
    import napari

    viewer = napari.Viewer(title="napari-cnnvision demo")
    viewer.open_sample("napari-cnnvision", SAMPLE)
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnvision", "Segment")
    viewer.window.add_plugin_dock_widget("napari-cnnvision", "Models")
    seg.image.value = viewer.layers[SAMPLE]
    if run:
        seg.run()
    return viewer, seg


def result_layer(viewer):
    """The Labels layer the Segment widget made on the sample, or None."""
    from .layers.segmentation import RESULT_KEY

    for lyr in viewer.layers:
        meta = getattr(lyr, "metadata", {}).get(RESULT_KEY)
        if meta and meta.get("kind") == "segmentation" and meta.get("source") == SAMPLE:
            return lyr
    return None


def save_outputs(viewer, outdir: str | Path) -> dict:
    """Write the result layer's labels and features and a window screenshot; return the paths."""
    import numpy as np
    from PIL import Image

    from .core.io import atomic_write_with, write_tiff
    from .core.tables import write_table

    layer = result_layer(viewer)
    if layer is None:
        raise RuntimeError("the demo produced no segmentation layer")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"labels": outdir / f"{SAMPLE}_labels.tif", "table": outdir / f"{SAMPLE}_objects.csv",
             "screenshot": outdir / f"{SAMPLE}_screenshot.png"}
    write_tiff(paths["labels"], np.asarray(layer.data))
    write_table(paths["table"], {c: layer.features[c].to_numpy() for c in layer.features.columns})
    shot = viewer.screenshot(canvas_only=False, flash=False)
    atomic_write_with(paths["screenshot"], lambda tmp: Image.fromarray(shot).save(tmp, format="PNG"))
    return paths


def _close_toasts():
    """Close napari's pop-up notifications so they do not cover the screenshot."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # napari moved it; a toast in the picture is harmless
        return
    from qtpy.QtWidgets import QApplication

    for toast in [w for w in QApplication.instance().allWidgets() if isinstance(w, NapariQtNotification)]:
        toast.close()


def run_to_files(outdir: str, timeout_s: float = 600.0) -> int:
    """The GUI demo, end to end, into files (the window is real; Xvfb serves as a display)."""
    import time

    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer, seg = main(run=True)
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    t0 = time.monotonic()
    state = {"rc": 1}

    def poll():
        if seg.runner.running and time.monotonic() - t0 < timeout_s:
            return
        timer.stop()
        try:
            _close_toasts()
            viewer.reset_view()
            app.processEvents()
            paths = save_outputs(viewer, outdir)
            n = len(result_layer(viewer).features)
            print(f"{n} nuclei ({seg.status.value}); wrote {', '.join(str(p) for p in paths.values())}")
            state["rc"] = 0
        except Exception as exc:  # report, then close the window either way
            print(f"demo failed: {seg.status.value or exc}", file=sys.stderr)
        viewer.close()
        app.quit()

    timer = QTimer()
    timer.timeout.connect(poll)
    timer.start(200)
    app.exec_()
    return state["rc"]


def _cli(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_cnnvision.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write labels, table and a window screenshot here, then quit")
    a = p.parse_args(argv)
    if a.out:
        return run_to_files(a.out)
    import napari

    main()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
