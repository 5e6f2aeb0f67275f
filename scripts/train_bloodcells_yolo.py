"""Recipe for the ``bloodcells-yolo`` model: the one-shot detector on BCCD (RBC, WBC, Platelets).

Trained from scratch (nothing pretrained is reachable): the train split trains, the val split
chooses the epoch (mAP@0.5). The network sees the 640x480 images at ``--scale`` (0.5: 320x240)
and predicts on a stride-8 grid.

    python scripts/train_bloodcells_yolo.py --out runs-det --budget-min 60 --threads 1

Quick smoke run: ``--epochs 1 --limit 4``.
"""
from __future__ import annotations

import sys

from detection_recipe import parser, run


def main(argv=None):
    p = parser(__doc__, "bloodcells-yolo", epochs=300, batch=8, lr=2e-3, scale=0.5)
    p.add_argument("--widths", default="16,32,64,96,128", help="channels of the backbone stages")
    p.add_argument("--depths", default="0,1,1,1,1", help="residual blocks per stage")
    p.add_argument("--stride", type=int, default=8, help="stride of the prediction grid")
    p.add_argument("--head", type=int, default=64, help="channels of the neck and head")
    a = p.parse_args(argv)
    widths = [int(v) for v in a.widths.split(",")]
    depths = [int(v) for v in a.depths.split(",")]
    config = {"arch": "yolo", "in_channels": 3, "input_size": 640, "scale": a.scale, "widths": widths,
              "depths": depths, "stride": a.stride, "head_channels": a.head, "score_thresh": 0.25,
              "nms_thresh": 0.5}
    desc = (f"one-shot YOLO-style detector (backbone {widths}, stride-{a.stride} grid, centre-sampled "
            f"assignment, GIoU + objectness + class losses), images resized by {a.scale}")
    run(a, config, desc, argv, "scripts/train_bloodcells_yolo.py")


if __name__ == "__main__":
    sys.exit(main())
