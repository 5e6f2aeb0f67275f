"""Training from annotations (napari layers as plain arrays): the valid regions of partial
annotations, train/val splits, defaults derived from the annotation, and the training jobs.

Everything here but :mod:`.jobs` is numpy only (no Qt, napari or framework); the widget, the
CLI and the API build the same training sets with it.
"""
