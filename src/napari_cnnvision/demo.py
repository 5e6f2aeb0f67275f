"""``python -m napari_cnnvision.demo``: napari with the plugin docked on the nuclei sample.

The default segmentation model runs in the compute worker as soon as the window is up,
and its Labels layer appears on the image.
"""
from __future__ import annotations


def main(run: bool = True):
    import napari

    viewer = napari.Viewer(title="napari-cnnvision demo")
    viewer.open_sample("napari-cnnvision", "nuclei_2d")
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnvision", "Segment")
    viewer.window.add_plugin_dock_widget("napari-cnnvision", "Models")
    seg.image.value = viewer.layers["nuclei_2d"]
    if run:
        seg.run()
    return viewer, seg


if __name__ == "__main__":
    import napari

    main()
    napari.run()
