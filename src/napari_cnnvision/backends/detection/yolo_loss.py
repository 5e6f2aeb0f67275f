"""Training targets and losses of the one-shot detector (:mod:`.yolo`).

Assignment (centre sampling, as in FCOS/YOLOX): a cell is responsible for a box when its
centre lies inside the box and within ``radius`` cells of the box centre; the cell that
holds the box centre always is. A cell claimed by several boxes takes the smallest.

Losses, each a scalar:

* ``loss_box``: generalized IoU loss of the decoded boxes of the responsible cells;
* ``loss_obj``: binary cross-entropy of objectness on every cell; the target of a
  responsible cell is the IoU of its (detached) box with its ground truth, so a better
  placed box scores higher and wins the NMS;
* ``loss_cls``: cross-entropy of the class logits on the responsible cells.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def assign_cells(centres: torch.Tensor, gt: torch.Tensor, stride: int, radius: float) -> torch.Tensor:
    """Index of the ground-truth box each cell is responsible for, -1 for none.

    ``centres`` (N, 2) x, y; ``gt`` (M, 4) x0, y0, x1, y1 (same pixels).
    """
    n = centres.shape[0]
    if gt.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=centres.device)
    cx, cy = centres[:, 0:1], centres[:, 1:2]  # (N, 1)
    x0, y0, x1, y1 = gt.unbind(1)  # (M,)
    gcx, gcy = (x0 + x1) / 2, (y0 + y1) / 2
    inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
    r = radius * stride
    near = ((cx - gcx).abs() < r) & ((cy - gcy).abs() < r)
    cand = inside & near  # (N, M)
    # the cell holding each box centre
    w = int(round(float(centres[:, 0].max() / stride + 0.5)))
    col = (gcx / stride).floor().clamp(0, w - 1).long()
    row = (gcy / stride).floor().clamp(0, n // w - 1).long()
    cand[row * w + col, torch.arange(gt.shape[0], device=gt.device)] = True
    area = ((x1 - x0) * (y1 - y0)).expand(n, -1)
    area = torch.where(cand, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    return torch.where(torch.isfinite(best_area), best, torch.full_like(best, -1))


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def yolo_losses(boxes, obj, cls, centres, targets, stride, radius, weights) -> dict:
    """``boxes`` (B, N, 4) decoded, ``obj`` (B, N), ``cls`` (B, N, K); targets in the same pixels."""
    from torchvision.ops import generalized_box_iou_loss

    obj_target = torch.zeros_like(obj)
    pred_pos, gt_pos, cls_pos, lab_pos = [], [], [], []
    for i, t in enumerate(targets):
        gt, labels = t["boxes"].reshape(-1, 4), t["labels"].reshape(-1)
        idx = assign_cells(centres, gt, stride, radius)
        pos = torch.nonzero(idx >= 0).flatten()
        if pos.numel() == 0:
            continue
        g = gt[idx[pos]]
        p = boxes[i, pos]
        obj_target[i, pos] = _paired_iou(p.detach(), g).clamp(min=0.0)
        pred_pos.append(p)
        gt_pos.append(g)
        cls_pos.append(cls[i, pos])
        lab_pos.append(labels[idx[pos]].long() - 1)
    loss_obj = F.binary_cross_entropy_with_logits(obj, obj_target)
    if pred_pos:
        p, g = torch.cat(pred_pos), torch.cat(gt_pos)
        loss_box = generalized_box_iou_loss(p, g, reduction="mean")
        loss_cls = F.cross_entropy(torch.cat(cls_pos), torch.cat(lab_pos))
    else:  # no objects in the batch: only objectness learns (keep the graph connected)
        loss_box = boxes.sum() * 0.0
        loss_cls = cls.sum() * 0.0
    return {"loss_box": weights.get("box", 1.0) * loss_box,
            "loss_obj": weights.get("obj", 1.0) * loss_obj,
            "loss_cls": weights.get("cls", 1.0) * loss_cls}
