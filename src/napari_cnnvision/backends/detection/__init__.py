"""Object detection (PyTorch): boxes with a class and a score.

* :mod:`.predict` -- inference on any image (channels, bit depth, size, stacks); large images
  are tiled (:mod:`.tiling`); the worker job ``<backend>.predict``.
* :mod:`.evaluate` -- COCO mAP (pycocotools), per-class AP, precision / recall.
* :mod:`.data` -- a Pascal VOC dataset folder (images/, annotations/, splits/) as arrays.
* :mod:`.models` -- the detector networks (one-shot YOLO-style, Faster R-CNN); :mod:`.train`.

Importing this package imports no framework.
"""
