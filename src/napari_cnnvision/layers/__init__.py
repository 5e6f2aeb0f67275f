"""Thin conversion of backend results to napari LayerDataTuples (no Qt, no napari import).

One module per task (``segmentation``, ``detection`` — which also converts localization
results); ``common`` holds what they share.
"""
from .common import RESULT_KEY, result_name
from .detection import detection_layers
from .segmentation import segmentation_layers

__all__ = ["RESULT_KEY", "result_name", "segmentation_layers", "detection_layers"]
