"""``napari-cnnvision evaluate segment``: score predicted label images against ground truth."""
from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("evaluate", help="score results against ground truth")
    esub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = esub.add_parser("segment", help="precision, recall, F1 and AP at IoU 0.5..0.9 of label images",
                        description="Pairs DIR/<stem>.tif files by name. AP is TP/(TP+FP+FN).")
    s.add_argument("--pred", required=True, metavar="DIR")
    s.add_argument("--truth", required=True, metavar="DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_segment)


def run_segment(args) -> int:
    from ..backends.evaluate import score_segmentations
    from ..core.images import read_image

    pred_dir, truth_dir = Path(args.pred), Path(args.truth)
    for d in (pred_dir, truth_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"no such folder: {d}")
    truths_f = {p.stem: p for p in truth_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    preds_f = {p.stem: p for p in pred_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    common = sorted(set(truths_f) & set(preds_f))
    if not common:
        raise ValueError(f"no label images with matching names in {pred_dir} and {truth_dir}")
    missing = sorted(set(truths_f) - set(preds_f))
    truths = [read_image(truths_f[k]) for k in common]
    preds = [read_image(preds_f[k]) for k in common]
    s = score_segmentations(truths, preds)
    if args.json:
        print(json.dumps({**s.__dict__, "missing_predictions": missing}, indent=2))
        return 0
    print(f"{s.n_images} images" + (f" ({len(missing)} ground-truth images have no prediction)" if missing else ""))
    print(f"{'IoU':>5} {'precision':>9} {'recall':>7} {'F1':>6} {'AP':>6} {'TP':>6} {'FP':>6} {'FN':>6}")
    for i in range(len(s.iou)):
        print(f"{s.iou[i]:5.2f} {s.precision[i]:9.3f} {s.recall[i]:7.3f} {s.f1[i]:6.3f} {s.ap[i]:6.3f} "
              f"{s.tp[i]:6d} {s.fp[i]:6d} {s.fn[i]:6d}")
    return 0
