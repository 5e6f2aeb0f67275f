"""Recipe for the ``bloodcells-frcnn`` model: torchvision's Faster R-CNN on BCCD (RBC, WBC, Platelets).

Trained from scratch (``weights=None, weights_backbone=None``: nothing pretrained is reachable);
the train split trains, the val split chooses the epoch (mAP@0.5). The images are resized by
``--scale`` inside the model (a fixed factor, not torchvision's fixed short side). For CPU
training the RPN keeps fewer proposals, the box head samples 128 RoIs per image and is one
128-wide layer instead of two 1024-wide ones; anchors start at 16 px for the platelets. The
weights are stored as float16 (loaded back into float32).

    python scripts/train_bloodcells_frcnn.py --out runs-det --budget-min 45 --threads 1
    python scripts/train_bloodcells_frcnn.py --arch fasterrcnn_resnet50_fpn ...   # the accurate variant

Quick smoke run: ``--epochs 1 --limit 4``.
"""
from __future__ import annotations

import sys

from detection_recipe import parser, run


def main(argv=None):
    p = parser(__doc__, "bloodcells-frcnn", epochs=100, batch=4, lr=1e-3, scale=0.5, warmup=50)
    p.add_argument("--arch", default="fasterrcnn_mobilenet_v3_large_fpn",
                   choices=["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn"])
    p.add_argument("--head", type=int, default=128, help="width of the box head's fc layer")
    a = p.parse_args(argv)
    config = {"arch": a.arch, "in_channels": 3, "input_size": 640, "scale": a.scale,
              "anchor_sizes": [16, 32, 64, 128, 256], "box_head": {"conv": [], "fc": [a.head]},
              "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 600,
              "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
              "box_batch_size_per_image": 128, "box_detections_per_img": 300,
              "score_thresh": 0.25, "nms_thresh": 0.5, "weights_dtype": "float16"}
    desc = (f"torchvision Faster R-CNN ({a.arch}, trained from scratch), box head fc {a.head}, "
            f"anchors 16-256 px, images resized by {a.scale}")
    run(a, config, desc, argv, "scripts/train_bloodcells_frcnn.py")


if __name__ == "__main__":
    sys.exit(main())
