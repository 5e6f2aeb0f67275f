"""Thin napari dock widgets. They gather inputs, start jobs in the compute worker from a
``thread_worker`` and turn results into layers via :mod:`napari_cnnvision.layers`."""
