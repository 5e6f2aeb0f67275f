"""A compact one-shot ("YOLO-style") detector: backbone -> neck -> one grid head.

One forward pass predicts, for every cell of a stride-``stride`` grid, the distances from the
cell centre to the four box edges, an objectness logit and ``num_classes`` class logits.
Decoding keeps cells whose score (objectness x class probability) passes ``score_thresh``
and runs class-wise NMS (``torchvision.ops.batched_nms``).

It follows torchvision's detection convention: ``model(images)`` takes a list of
``(C, H, W)`` float tensors in 0..1 of any size and, in eval mode, returns one dict per image
with ``boxes`` (x0, y0, x1, y1 in input pixels), ``labels`` (1..K, 0 is background) and
``scores``; in train mode ``model(images, targets)`` returns a dict of scalar losses
(see :mod:`.yolo_loss`). Images are resized by the fixed factor ``scale`` inside the model
(microscopy objects have a physical size, so a tile is never stretched to a fixed size)
and boxes are mapped back to input pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .yolo_loss import yolo_losses


class ConvBNAct(nn.Sequential):
    """3x3 (or k x k) convolution, batch norm, SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.SiLU(inplace=True))


class Residual(nn.Module):
    """x + conv3x3(conv1x1(x)): a cheap block that deepens a stage without changing its shape."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c, c // 2, 1), ConvBNAct(c // 2, c, 3))

    def forward(self, x):
        return x + self.body(x)


class Backbone(nn.Module):
    """Stages of a strided conv + residual blocks; returns the features at every stride."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], depths: tuple[int, ...]):
        super().__init__()
        stages, c = [], in_channels
        for w, d in zip(widths, depths):
            stages.append(nn.Sequential(ConvBNAct(c, w, 3, 2), *[Residual(w) for _ in range(d)]))
            c = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class Neck(nn.Module):
    """Top-down path: upsample the deepest features and fuse them down to the head's stride."""

    def __init__(self, widths: tuple[int, ...], n_out_levels: int, out_channels: int):
        super().__init__()
        # widths[-1] is the deepest stage; fuse into stages -2, -3, ... down to the head's level
        self.fuse = nn.ModuleList()
        c = widths[-1]
        for i in range(2, n_out_levels + 2):
            skip = widths[-i]
            self.fuse.append(nn.Sequential(ConvBNAct(c + skip, out_channels, 1), ConvBNAct(out_channels, out_channels)))
            c = out_channels
        self.project = ConvBNAct(c, out_channels, 1) if not self.fuse else nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i, fuse in enumerate(self.fuse):
            skip = feats[-2 - i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = fuse(torch.cat([x, skip], 1))
        return self.project(x)


class GridHead(nn.Module):
    """Per cell: 4 box distances (l, t, r, b), 1 objectness logit, K class logits."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.body = ConvBNAct(c, c)
        self.box = nn.Conv2d(c, 4, 1)
        self.obj = nn.Conv2d(c, 1, 1)
        self.cls = nn.Conv2d(c, num_classes, 1)
        nn.init.constant_(self.box.bias, math.log(2.0))  # boxes start 4 cells wide
        nn.init.constant_(self.obj.bias, -4.0)  # few objects per cell at the start
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.normal_(self.obj.weight, std=0.01)
        nn.init.normal_(self.cls.weight, std=0.01)

    def forward(self, x):
        x = self.body(x)
        return self.box(x), self.obj(x)[:, 0], self.cls(x)


class YoloDetector(nn.Module):
    """The one-shot detector (see the module docstring)."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths=(16, 32, 64, 96, 128),
                 depths=(0, 1, 1, 1, 1), stride: int = 8, head_channels: int = 64, scale: float = 1.0,
                 score_thresh: float = 0.25, nms_thresh: float = 0.5, detections_per_img: int = 300,
                 pre_nms_top_n: int = 2000, center_radius: float = 2.5, loss_weights=None):
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != len(depths) or len(widths) < 2:
            raise ValueError("widths and depths need the same length (at least 2 stages)")
        n_levels = int(round(math.log2(stride)))
        if 2 ** n_levels != stride or not 1 <= n_levels < len(widths):
            raise ValueError(f"stride must be a power of 2 below 2**{len(widths)}, got {stride}")
        self.num_classes, self.in_channels, self.stride = int(num_classes), int(in_channels), int(stride)
        self.max_stride = 2 ** len(widths)
        self.scale = float(scale)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img, self.pre_nms_top_n = int(detections_per_img), int(pre_nms_top_n)
        self.center_radius = float(center_radius)
        self.loss_weights = dict(loss_weights or {"box": 2.0, "obj": 1.0, "cls": 1.0})
        self.backbone = Backbone(in_channels, widths, depths)
        self.neck = Neck(widths, len(widths) - n_levels, head_channels)
        self.head = GridHead(head_channels, self.num_classes)

    # --- pre-processing -----------------------------------------------------------
    def _batch(self, images: list[torch.Tensor]):
        """Resize by ``scale``, normalize, pad to a multiple of the deepest stride, stack."""
        sized, sizes = [], []
        for im in images:
            if im.ndim != 3 or im.shape[0] != self.in_channels:
                raise ValueError(f"expected ({self.in_channels}, H, W) images, got {tuple(im.shape)}")
            if self.scale != 1.0:
                h = max(1, int(round(im.shape[1] * self.scale)))
                w = max(1, int(round(im.shape[2] * self.scale)))
                im = F.interpolate(im[None], size=(h, w), mode="bilinear", align_corners=False,
                                   antialias=self.scale < 1)[0]
            sized.append((im - 0.5) / 0.25)
            sizes.append(tuple(im.shape[1:]))
        m = self.max_stride
        H = max(-(-s[0] // m) * m for s in sizes)
        W = max(-(-s[1] // m) * m for s in sizes)
        x = sized[0].new_zeros((len(sized), self.in_channels, H, W))
        for i, im in enumerate(sized):
            x[i, :, :im.shape[1], :im.shape[2]] = im
        return x, sizes

    def cell_centres(self, h: int, w: int, device) -> torch.Tensor:
        """(h*w, 2) x, y of the cell centres in (scaled) input pixels, row-major."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * self.stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * self.stride
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)

    def decode_boxes(self, box_raw: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) raw distances -> (B, h*w, 4) x0, y0, x1, y1."""
        d = torch.exp(box_raw.clamp(max=8.0)).flatten(2).transpose(1, 2) * self.stride  # l, t, r, b
        c = centres[None]
        return torch.cat([c - d[..., :2], c + d[..., 2:]], -1)

    # --- forward ------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("in train mode the detector needs targets")
        x, sizes = self._batch(list(images))
        box_raw, obj, cls = self.head(self.neck(self.backbone(x)))
        h, w = obj.shape[-2:]
        centres = self.cell_centres(h, w, x.device)
        boxes = self.decode_boxes(box_raw, centres)
        obj = obj.flatten(1)  # (B, N)
        cls = cls.flatten(2).transpose(1, 2)  # (B, N, K)
        if self.training:
            scaled = [{"boxes": t["boxes"].to(x.device, torch.float32) * self.scale,
                       "labels": t["labels"].to(x.device)} for t in targets]
            return yolo_losses(boxes, obj, cls, centres, scaled, self.stride, self.center_radius,
                               self.loss_weights)
        return self.postprocess(boxes, obj, cls, sizes)

    @torch.no_grad()
    def postprocess(self, boxes, obj, cls, sizes) -> list[dict]:
        from torchvision.ops import batched_nms

        scores_all = torch.sigmoid(obj)[..., None] * torch.softmax(cls, -1)
        out = []
        for i, (h, w) in enumerate(sizes):
            score, label = scores_all[i].max(-1)
            keep = torch.nonzero(score > self.score_thresh).flatten()
            if keep.numel() > self.pre_nms_top_n:
                keep = keep[score[keep].topk(self.pre_nms_top_n).indices]
            b, s, lab = boxes[i, keep], score[keep], label[keep]
            b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w),
                             b[:, 3].clamp(0, h)], 1)
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            b, s, lab = b[ok], s[ok], lab[ok]
            k = batched_nms(b, s, lab, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": b[k] / self.scale, "labels": lab[k].to(torch.int64) + 1, "scores": s[k]})
        return out
