"""Detection metrics: COCO mAP and per-class AP (pycocotools), precision / recall at a threshold.

Inputs are per-image lists in the plugin's box order (y0, x0, y1, x1):
``preds[i] = (boxes, class_ids, scores)`` and ``truths[i] = (boxes, class_ids)`` (a
:class:`~napari_cnnvision.core.results.DetectionResult` works as a prediction too). Numpy +
pycocotools; no framework.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from ...core.formats import coco as coco_fmt


def _pred(p):
    if hasattr(p, "boxes") and hasattr(p, "scores"):
        return p.boxes, p.class_ids, p.scores
    boxes, ids, scores = p
    return boxes, ids, scores


def _check(preds, truths):
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} ground-truth images")


def to_coco(preds, truths, class_names, shapes=None) -> tuple[dict, list[dict]]:
    """(ground-truth COCO dict, list of detection dicts) for pycocotools."""
    _check(preds, truths)
    images, gts, dets = [], [], []
    for i, ((tb, tc), p) in enumerate(zip(truths, preds)):
        h, w = shapes[i] if shapes is not None else (10 ** 6, 10 ** 6)
        images.append(coco_fmt.image_entry(i + 1, f"{i + 1}", h, w))
        gts.append({"boxes": tb, "class_ids": np.asarray(tc, np.int64)})
        pb, pc, ps = _pred(p)
        dets.extend(coco_fmt.annotations_for(i + 1, pb, np.asarray(pc, np.int64), np.asarray(ps, np.float64),
                                             first_id=len(dets) + 1))
    return coco_fmt.build(images, class_names, gts), dets


def coco_map(preds, truths, class_names, max_dets: int = 100, shapes=None) -> dict:
    """COCO box metrics: ``map50`` (mAP@0.5), ``map`` (mAP@[.5:.95]), ``ap50`` per class name
    (NaN for a class without ground truth), ``n_images``, ``n_truth``, ``n_pred``.

    ``max_dets`` is the most detections per image that count (COCO's default 100; raise it
    for images with more objects).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict, dets = to_coco(preds, truths, class_names, shapes)
    out = {"n_images": len(truths), "n_truth": len(gt_dict["annotations"]), "n_pred": len(dets)}
    if not gt_dict["annotations"]:
        raise ValueError("the ground truth holds no boxes: mAP is undefined")
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if not dets:
            return {**out, "map50": 0.0, "map": 0.0, "ap50": {n: 0.0 for n in class_names}}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    i50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    ap50 = {}
    for k, name in enumerate(class_names):
        p = prec[i50, :, k, 0, -1]
        ap50[name] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    return {**out, "map50": float(ev.stats[1]), "map": float(ev.stats[0]), "ap50": ap50}


def box_iou(a, b) -> np.ndarray:
    """``(len(a), len(b))`` IoU of (y0, x0, y1, x1) boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(pred_boxes, pred_scores, true_boxes, iou_thresh: float = 0.5) -> np.ndarray:
    """Greedy matching by score: for each prediction, the index of the true box it matches or -1."""
    order = np.argsort(-np.asarray(pred_scores, np.float64), kind="stable")
    iou = box_iou(pred_boxes, true_boxes)
    taken = np.zeros(iou.shape[1], bool)
    out = np.full(len(order), -1, np.int64)
    for i in order:
        if not iou.shape[1]:
            break
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_thresh:
            out[i], taken[j] = j, True
    return out


def precision_recall(preds, truths, class_names, score_thresh: float = 0.5, iou_thresh: float = 0.5) -> dict:
    """Precision, recall and F1 of the predictions scoring ``>= score_thresh``, matched one to
    one within each class at IoU ``>= iou_thresh``: ``{"all": {...}, "per_class": {name: {...}}}``
    with ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` each."""
    _check(preds, truths)
    k = len(class_names)
    tp, fp, fn = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
    for p, (tb, tc) in zip(preds, truths):
        pb, pc, ps = (np.asarray(v) for v in _pred(p))
        keep = np.asarray(ps, np.float64) >= score_thresh
        pb, pc, ps = pb.reshape(-1, 4)[keep], pc[keep], ps[keep]
        tb, tc = np.asarray(tb).reshape(-1, 4), np.asarray(tc)
        for c in range(k):
            m = match(pb[pc == c], ps[pc == c], tb[tc == c], iou_thresh)
            hit = int((m >= 0).sum())
            tp[c] += hit
            fp[c] += int((m < 0).sum())
            fn[c] += int((tc == c).sum()) - hit

    def stats(t, f, n):
        prec = t / (t + f) if t + f else float("nan")
        rec = t / (t + n) if t + n else float("nan")
        f1 = 2 * t / (2 * t + f + n) if t + f + n else float("nan")
        return {"tp": int(t), "fp": int(f), "fn": int(n), "precision": prec, "recall": rec, "f1": f1}

    return {"all": stats(tp.sum(), fp.sum(), fn.sum()),
            "per_class": {name: stats(tp[c], fp[c], fn[c]) for c, name in enumerate(class_names)},
            "score_thresh": float(score_thresh), "iou_thresh": float(iou_thresh)}


__all__ = ["coco_map", "precision_recall", "box_iou", "match", "to_coco"]
