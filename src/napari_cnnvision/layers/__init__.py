"""Thin conversion of backend results to napari LayerDataTuples (no Qt, no napari import)."""
from .segmentation import RESULT_KEY, segmentation_layers

__all__ = ["RESULT_KEY", "segmentation_layers"]
