"""The ``napari-cnnvision`` command: the same backends as the widgets, run in-process."""
