"""napari-cnnvision: CNN segmentation, detection and localization for microscopy in napari.

Importing this package is cheap: it imports neither napari, Qt, TensorFlow, PyTorch nor
StarDist. The Python API lives in :mod:`napari_cnnvision.api`.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
