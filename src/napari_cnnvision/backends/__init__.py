"""Compute backends: numpy in, plain result objects out.

No Qt or napari imports here. TensorFlow, PyTorch and StarDist are imported inside the
functions that need them, so importing this package stays cheap.
"""
