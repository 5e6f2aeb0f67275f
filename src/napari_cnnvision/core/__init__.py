"""Pure-Python core: model registry, datasets, normalization, result types.

Nothing in this package imports Qt, napari, TensorFlow or PyTorch.
"""
