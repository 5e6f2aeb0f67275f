"""``napari-cnnvision evaluate segment|detect|localize``: score results against ground truth.

- ``segment``: label images paired by name (precision, recall, F1, AP at IoU 0.5..0.9);
- ``detect``: the ``detect`` command's ``detections.json`` (COCO with scores) against any annotation
  source the plugin reads (a Pascal VOC folder, a COCO file, a YOLO folder, a box CSV): COCO
  mAP@0.5, mAP@[.5:.95] and AP@0.5 per class by pycocotools, images paired by base name;
- ``localize``: the ``localize`` command's ``localizations.csv`` against a CSV with an ``image``
  column, a class column (``class``, or the one other non-box column, e.g. ``subtype``) and
  ``xmin,ymin,xmax,ymax``: class accuracy, balanced accuracy, per-class accuracy and box IoU.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

BOX_COLS = ("xmin", "ymin", "xmax", "ymax")
LOW_SCORE = 0.01  # the score threshold of COCO-style mAP runs


def add_parser(sub):
    p = sub.add_parser("evaluate", help="score results against ground truth")
    esub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    s = esub.add_parser("segment", help="precision, recall, F1 and AP at IoU 0.5..0.9 of label images",
                        description="Pairs DIR/<stem>.tif files by name. AP is TP/(TP+FP+FN).")
    s.add_argument("--pred", required=True, metavar="DIR")
    s.add_argument("--truth", required=True, metavar="DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_segment)
    d = esub.add_parser("detect", help="COCO mAP@0.5, mAP@[.5:.95] and per-class AP (pycocotools) of detections",
                        description="Pairs images by base name. --truth is a Pascal VOC folder, a COCO file, a "
                                    "YOLO folder or a box CSV; an image of the predictions with no boxes counts "
                                    "as found nothing. Classes are matched by name.")
    d.add_argument("--pred", required=True, metavar="DETECTIONS_JSON", help="the detect command's detections.json")
    d.add_argument("--truth", required=True, metavar="DIR_OR_COCO")
    d.add_argument("--images", default=None, metavar="DIR", help="the images, where the truth lacks their sizes")
    d.add_argument("--max-dets", type=int, default=100, help="most detections per image that count (COCO: 100)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=run_detect)
    loc = esub.add_parser("localize", help="class accuracy, balanced accuracy and mean box IoU of localizations",
                          description="Pairs rows by image name (and frame, where both tables have one).")
    loc.add_argument("--pred", required=True, metavar="CSV", help="the localize command's localizations.csv")
    loc.add_argument("--truth", required=True, metavar="CSV", help="image, class (or e.g. subtype), xmin..ymax")
    loc.add_argument("--json", action="store_true")
    loc.set_defaults(func=run_localize)


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


# --- detect ---------------------------------------------------------------------------------------------------------

def _by_stem(ds, what: str) -> dict:
    out = {}
    for a in ds.images:
        if a.stem in out:
            raise ValueError(f"the {what} name two images {a.stem!r} (base names must be unique)")
        out[a.stem] = a
    return out


def detection_scores(pred_ds, truth_ds, max_dets: int = 100) -> dict:
    """COCO metrics (see :func:`~napari_cnnvision.backends.detection.evaluate.coco_map`) of a
    prediction :class:`AnnotationSet` (with scores) against a ground-truth one, paired by base name;
    ``missing_predictions`` lists truth images the predictions do not name."""
    from ..backends.detection.evaluate import coco_map
    from ..core.formats.annotations import split_frames

    preds, truths = _by_stem(split_frames(pred_ds), "predictions"), _by_stem(split_frames(truth_ds), "ground truth")
    common = [k for k in truths if k in preds]
    if not common:
        raise ValueError("no image of the predictions is in the ground truth (images are paired by base name)")
    if any(preds[k].scores is None for k in common if len(preds[k])):
        raise ValueError("the predictions have no scores: AP needs the detect command's scored boxes")
    names = list(truth_ds.class_names) + [c for c in pred_ds.class_names if c not in truth_ds.class_names]
    ids = {c: i for i, c in enumerate(names)}
    t_list, p_list, shapes = [], [], []
    for k in common:
        t, p = truths[k], preds[k]
        t_list.append((t.boxes, np.array([ids[c] for c in t.classes], np.int64)))
        sc = p.scores if p.scores is not None else np.zeros(0)
        p_list.append((p.boxes, np.array([ids[c] for c in p.classes], np.int64), sc))
        size = t.size or p.size
        shapes.append(size if size is not None else (10 ** 6, 10 ** 6))
    m = coco_map(p_list, t_list, names, max_dets=max_dets, shapes=shapes)
    m["ap50"] = {c: v for c, v in m["ap50"].items() if c in truth_ds.class_names or not math.isnan(v)}
    scores = [float(preds[k].scores.min()) for k in common if len(preds[k])]
    m["min_score"] = min(scores) if scores else None
    m["missing_predictions"] = [truths[k].image for k in truths if k not in preds]
    m["extra_predictions"] = len([k for k in preds if k not in truths])
    return m


def run_detect(args) -> int:
    from ..core.formats.annotations import read_annotations

    for path in (args.pred, args.truth):
        if not Path(path).exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    pred = read_annotations(args.pred, args.images, masks=False)
    truth = read_annotations(args.truth, args.images, masks=False)
    m = detection_scores(pred, truth, args.max_dets)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    miss = m["missing_predictions"]
    print(f"{m['n_images']} images, {m['n_truth']} true boxes, {m['n_pred']} predicted"
          + (f" ({len(miss)} ground-truth images have no prediction)" if miss else ""))
    print(f"mAP@0.5 {m['map50']:.3f}  mAP@[.5:.95] {m['map']:.3f}")
    if m["min_score"] is not None and m["min_score"] > LOW_SCORE:
        print(f"note: the predictions hold scores >= {m['min_score']:.2f} only, so AP misses the recall below "
              f"that; for COCO mAP run detect with --score-thresh {LOW_SCORE}")
    print("AP@0.5 per class:")
    for c, v in m["ap50"].items():
        print(f"  {c:<16} {'-' if math.isnan(v) else f'{v:.3f}'}")
    return 0


# --- localize -------------------------------------------------------------------------------------------------------

def read_localization_table(path: str | Path) -> dict:
    """``(image base name, frame or None) -> (class name, (y0, x0, y1, x1))`` of a localization CSV.

    The class column is ``class``, else the one column that is neither the image, a box corner,
    ``score`` nor ``frame`` (e.g. ``subtype``)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read the CSV file {path}: {exc}") from exc
    missing = [c for c in ("image", *BOX_COLS) if c not in cols]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (need image, a class column, {', '.join(BOX_COLS)})")
    if "class" in cols:
        cls = "class"
    else:
        other = [c for c in cols if c not in ("image", "score", "frame", *BOX_COLS)]
        if len(other) != 1:
            raise ValueError(f"{path}: which column is the class? (no 'class' column; candidates: {other or 'none'})")
        cls = other[0]
    out = {}
    for i, r in enumerate(rows, start=2):
        try:
            x0, y0, x1, y1 = (float(r[c]) for c in BOX_COLS)
            frame = int(r["frame"]) if r.get("frame") not in (None, "") else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} line {i}: a box coordinate or frame is not a number") from exc
        key = (Path(r["image"] or "").stem, frame)
        if key in out:
            raise ValueError(f"{path} line {i}: a second row for {r['image']}"
                             + (f" frame {frame}" if frame is not None else ""))
        out[key] = (str(r[cls]), (y0, x0, y1, x1))
    return out


def localization_table_scores(pred: dict, truth: dict) -> dict:
    """:func:`~napari_cnnvision.backends.localizer.metrics.localization_scores` of two tables from
    :func:`read_localization_table`; rows are paired by image (and frame, where the truth has one;
    a truth without frames pairs with frame 0 or with a prediction without frame)."""
    from ..backends.localizer.metrics import localization_scores

    def find(key):
        if key in pred:
            return pred[key]
        if key[1] is None:
            return pred.get((key[0], 0))
        return None

    pairs = [(truth[k], find(k)) for k in truth]
    missing = [k[0] + (f" frame {k[1]}" if k[1] is not None else "") for k, (_, p) in zip(truth, pairs)
               if p is None]
    pairs = [(t, p) for t, p in pairs if p is not None]
    if not pairs:
        raise ValueError("no image of the predictions is in the ground truth (rows are paired by image name)")
    names = list(dict.fromkeys(t[0] for t, _ in pairs))
    names += [c for c in dict.fromkeys(p[0] for _, p in pairs) if c not in names]
    ids = {c: i for i, c in enumerate(names)}
    s = localization_scores([ids[p[0]] for _, p in pairs], [ids[t[0]] for t, _ in pairs],
                            np.array([p[1] for _, p in pairs]), np.array([t[1] for t, _ in pairs]), names)
    return {**s, "missing_predictions": missing}


def run_localize(args) -> int:
    for path in (args.pred, args.truth):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    s = localization_table_scores(read_localization_table(args.pred), read_localization_table(args.truth))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    miss = s["missing_predictions"]
    print(f"{s['n']} images" + (f" ({len(miss)} ground-truth rows have no prediction)" if miss else ""))
    print(f"accuracy {s['accuracy']:.3f}  balanced accuracy {s['balanced_accuracy']:.3f}")
    for c, v in s["per_class_accuracy"].items():
        print(f"  {c:<16} {v:.3f}  (n={s['per_class_n'][c]})")
    print(f"box IoU: mean {s['mean_iou']:.3f}, >= 0.5 {s['iou_ge_0.5']:.3f}, >= 0.75 {s['iou_ge_0.75']:.3f}")
    return 0
