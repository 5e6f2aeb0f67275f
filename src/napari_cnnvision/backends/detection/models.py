"""Build, save and load the detectors; every one follows torchvision's detection convention.

``model(images)`` takes a list of ``(C, H, W)`` float32 tensors in 0..1 (any size); in eval
mode it returns one dict per image: ``boxes`` (n, 4) x0, y0, x1, y1 in input pixels,
``labels`` int64 in 1..K (0 is background), ``scores`` (n,). In train mode
``model(images, targets)`` with targets ``[{"boxes": (m, 4), "labels": (m,)}]`` returns a
dict of scalar losses.

A config is a plain dict::

    {"arch": "yolo" | "fasterrcnn_mobilenet_v3_large_fpn" | "fasterrcnn_resnet50_fpn",
     "classes": [...], "in_channels": 3,
     "input_size": 640,   # long side of the training images in input pixels (the tile size)
     "scale": 0.5,        # the network sees the input resized by this factor
     "score_thresh": 0.25, "nms_thresh": 0.5, ...arch-specific fields}

A model folder holds ``config.json``, ``weights.pt`` (``torch.save`` of the state_dict,
read back with ``weights_only=True``) and the ``model.json`` card; it is written into a
temporary folder and moved into place, so a folder is never half written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ...core.registry import CARD_NAME, CorruptModel, ModelCard, ModelNotFound, write_card

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.pt"
ARCHS = ("yolo", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn")
YOLO_FIELDS = ("widths", "depths", "stride", "head_channels", "center_radius", "detections_per_img",
               "pre_nms_top_n", "loss_weights")
FRCNN_FIELDS = ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                "box_detections_per_img")  # passed to torchvision's FasterRCNN
DEFAULTS = {"in_channels": 3, "input_size": 640, "scale": 1.0, "score_thresh": 0.25, "nms_thresh": 0.5}


def backend_of(arch: str) -> str:
    """The card's backend name: ``yolo`` or ``fasterrcnn``."""
    return "yolo" if arch == "yolo" else "fasterrcnn"


def normalize_config(config: dict) -> dict:
    """Check a config and fill in the defaults; raises ValueError naming the bad field."""
    if not isinstance(config, dict):
        raise ValueError(f"a detector config is a dict, got {type(config).__name__}")
    cfg = {**DEFAULTS, **config}
    if cfg.get("arch") not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg.get('arch')!r}")
    classes = cfg.get("classes")
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a non-empty list of names, got {classes!r}")
    cfg["classes"] = list(classes)
    for k in ("in_channels", "input_size"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {cfg[k]!r}")
    if not isinstance(cfg["scale"], (int, float)) or not 0 < cfg["scale"] <= 4:
        raise ValueError(f"scale must be a number in (0, 4], got {cfg['scale']!r}")
    for k in ("score_thresh", "nms_thresh"):
        if not isinstance(cfg[k], (int, float)) or not 0 <= cfg[k] <= 1:
            raise ValueError(f"{k} must be a number in 0..1, got {cfg[k]!r}")
    return cfg


def build_detector(config: dict):
    """A fresh (untrained) detector for ``config``; nothing is downloaded (weights=None)."""
    cfg = normalize_config(config)
    k = len(cfg["classes"])
    if cfg["arch"] == "yolo":
        from .yolo import YoloDetector

        kwargs = {f: cfg[f] for f in YOLO_FIELDS if f in cfg}
        model = YoloDetector(num_classes=k, in_channels=cfg["in_channels"], scale=cfg["scale"], **kwargs)
    else:
        model = _build_fasterrcnn(cfg, k)
    set_thresholds(model, cfg["score_thresh"], cfg["nms_thresh"])
    return model


def _build_fasterrcnn(cfg: dict, k: int):
    from torchvision.models import detection

    from .fixed_scale import FixedScaleTransform

    if cfg["in_channels"] != 3:
        raise ValueError(f"Faster R-CNN takes 3-channel images, the config asks for {cfg['in_channels']}")
    factory = getattr(detection, cfg["arch"])
    side = int(round(cfg["input_size"] * cfg["scale"]))
    extra = {f: cfg[f] for f in FRCNN_FIELDS if f in cfg}
    model = factory(weights=None, weights_backbone=None, num_classes=k + 1, min_size=side, max_size=side,
                    **extra)
    t = model.transform
    model.transform = FixedScaleTransform(cfg["scale"], t.image_mean, t.image_std,
                                          size_divisible=t.size_divisible)
    if cfg.get("anchor_sizes"):  # the same number of sizes as torchvision's (5)
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        old = model.rpn.anchor_generator
        sizes = tuple(int(v) for v in cfg["anchor_sizes"])
        n_maps, ratios = len(old.sizes), old.aspect_ratios[0]
        every_map = len(old.sizes[0]) > 1  # MobileNet: all sizes on each map; ResNet50: one per map
        want = len(old.sizes[0]) if every_map else n_maps
        if len(sizes) != want:
            raise ValueError(f"anchor_sizes needs {want} sizes for {cfg['arch']}, got {len(sizes)}")
        model.rpn.anchor_generator = AnchorGenerator((sizes,) * n_maps if every_map else tuple((v,) for v in sizes),
                                                     (ratios,) * n_maps)
    if cfg.get("box_head"):  # a slimmer box head than torchvision's 1024-wide two-layer MLP
        from torch import nn
        from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor

        conv, fc = list(cfg["box_head"].get("conv", [])), list(cfg["box_head"].get("fc", [256]))
        if not fc:
            raise ValueError("box_head needs at least one fc layer")
        c = model.backbone.out_channels
        r = model.roi_heads.box_roi_pool.output_size
        r = (r, r) if isinstance(r, int) else tuple(r)
        model.roi_heads.box_head = FastRCNNConvFCHead((c, *r), conv, fc, norm_layer=nn.BatchNorm2d)
        model.roi_heads.box_predictor = FastRCNNPredictor(fc[-1], k + 1)
    return model


def set_thresholds(model, score_thresh: float | None = None, nms_thresh: float | None = None):
    """Set the score threshold and the NMS IoU of a built detector (None keeps the value)."""
    for name, v in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if v is None:
            continue
        if not 0 <= float(v) <= 1:
            raise ValueError(f"{name} must be in 0..1, got {v}")
        target = model.roi_heads if hasattr(model, "roi_heads") else model
        setattr(target, name, float(v))
    return model


# --- class heads for another class set ------------------------------------------------
def class_keys(arch: str) -> tuple[str, ...]:
    """The weights whose rows run over the classes: YOLO's class convolution (one row per class),
    Faster R-CNN's box predictor (the background first, then 1 score / 4 box-delta rows per class)."""
    if arch == "yolo":
        return ("head.cls.weight", "head.cls.bias")
    return tuple(f"roi_heads.box_predictor.{n}.{p}" for n in ("cls_score", "bbox_pred") for p in ("weight", "bias"))


def class_rows_for(state: dict, own: dict, arch: str, old: list[str], new: list[str]) -> tuple[dict, list[str]]:
    """The class weights (:func:`class_keys`) of a detector built for the classes ``new`` (its fresh
    weights ``own``) from a base's ``state`` of the classes ``old``: the rows of the background and
    of every class the base knows by name are the base's, those of new classes keep their fresh
    initialization. Returns ``(tensors, the classes taken from the base)``; ``({}, [])`` when a
    weight does not have the layout of its class count (nothing is taken then)."""
    bg = 0 if arch == "yolo" else 1
    pairs = [(i, i) for i in range(bg)] + [(old.index(c) + bg, j + bg) for j, c in enumerate(new) if c in old]
    out = {}
    for k in class_keys(arch):
        if k not in own:
            continue
        if k not in state:
            return {}, []
        a, b = state[k], own[k].detach().clone()
        m = a.shape[0] // (len(old) + bg)  # rows per class
        if a.shape[0] != m * (len(old) + bg) or b.shape[0] != m * (len(new) + bg) or a.shape[1:] != b.shape[1:]:
            return {}, []
        for i, j in pairs:
            b[j * m:(j + 1) * m] = a[i * m:(i + 1) * m]  # a float16 file's rows become float32
        out[k] = b
    return out, ([c for c in new if c in old] if out else [])


# --- model folders --------------------------------------------------------------------
def _card_for(config: dict, folder: Path, card_fields: dict) -> ModelCard:
    fields = dict(card_fields or {})
    arch = config["arch"]
    return ModelCard(
        name=fields.pop("name", folder.name), task="detect", backend=backend_of(arch),
        classes=list(config["classes"]), axes=fields.pop("axes", "YXC"), channels=config["in_channels"],
        normalization=fields.pop("normalization", {"type": "scale", "factor": 1 / 255}),
        description=fields.pop("description", f"{arch} detector"),
        training=fields.pop("training", {}), metrics=fields.pop("metrics", {}),
        extra={"arch": arch, "input_size": config["input_size"], "scale": config["scale"],
               **fields.pop("extra", {}), **fields})


def save_detector(model, config: dict, folder, card_fields: dict | None = None) -> Path:
    """Write ``folder`` (config.json, weights.pt, model.json) atomically; returns the folder."""
    import torch

    from ...core.io import atomic_write_text

    cfg = normalize_config(config)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
        half = cfg.get("weights_dtype") == "float16"  # halves the file; loaded back into float32
        state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
                 for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_NAME)
        write_card(_card_for(cfg, folder, card_fields or {}), tmp)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_config(folder) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelNotFound(f"no model folder at {folder}")
    if not path.is_file():
        raise CorruptModel(f"the detector folder {folder} has no {CONFIG_NAME}")
    try:
        cfg = json.loads(path.read_text())
        return normalize_config(cfg)
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"the detector config {path} is unreadable or invalid: {exc}") from exc


def _read_state(path: Path, folder: Path) -> dict:
    import torch

    if not path.is_file():
        raise CorruptModel(f"the detector folder {folder} has no {WEIGHTS_NAME}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is a corrupt file to the user
        msg = str(exc)
        if "Weights only load failed" in msg or "GLOBAL" in msg:
            why = "it holds Python objects other than tensors, which are never loaded (weights_only=True)"
        elif isinstance(exc, EOFError) or "EOF" in msg or "zip" in msg or "central directory" in msg:
            why = "the file is empty, truncated or not a PyTorch file"
        else:
            why = msg.splitlines()[0][:200] if msg else type(exc).__name__
        raise CorruptModel(f"cannot load the weights {path} of the detector folder {folder}: {why}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptModel(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return state


def load_detector(folder):
    """``(model, config)`` of a detector folder, in eval mode on the CPU.

    A missing or damaged file raises :class:`~napari_cnnvision.core.registry.CorruptModel`.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    state = _read_state(folder / WEIGHTS_NAME, folder)
    model = build_detector(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise CorruptModel(f"the weights in {folder / WEIGHTS_NAME} do not fit the {cfg['arch']} detector "
                           f"of {folder / CONFIG_NAME}: {first}") from None
    model.eval()
    return model, cfg


__all__ = ["build_detector", "set_thresholds", "save_detector", "load_detector", "read_config",
           "normalize_config", "backend_of", "class_keys", "class_rows_for", "ARCHS", "CONFIG_NAME", "WEIGHTS_NAME",
           "CARD_NAME"]
