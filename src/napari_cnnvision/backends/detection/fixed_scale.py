"""torchvision's detection transform, resizing by a fixed factor instead of to a fixed size.

torchvision's Faster R-CNN resizes every image so its short side is ``min_size``; a small
tile would be blown up and a large one shrunk, so objects would change size with the
image. Microscopy objects have a physical size: here every image is resized by the same
``scale`` (the one used in training) and boxes go back through torchvision's own
post-processing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


class FixedScaleTransform(GeneralizedRCNNTransform):
    def __init__(self, scale: float, image_mean, image_std, size_divisible: int = 32):
        super().__init__(min_size=1, max_size=1, image_mean=image_mean, image_std=image_std,
                         size_divisible=size_divisible)
        self.scale = float(scale)

    def resize(self, image: torch.Tensor, target=None):
        h, w = image.shape[-2:]
        if self.scale != 1.0:
            size = (max(1, int(round(h * self.scale))), max(1, int(round(w * self.scale))))
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                                  antialias=self.scale < 1)[0]
        if target is not None and "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], [h, w], list(image.shape[-2:]))
        return image, target
