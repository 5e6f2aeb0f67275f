"""Fetch pretrained models through their libraries' own download-and-cache code."""
from __future__ import annotations

from ..core.registry import PRETRAINED, ModelNotFound


def _card(name: str):
    card = next((c for c in PRETRAINED if c.name == name), None)
    if card is None:
        raise ModelNotFound(f"{name!r} is not a known pretrained model ({', '.join(c.name for c in PRETRAINED)})")
    return card


def download(name: str, progress=None) -> str:
    """Download (or find in the cache) the pretrained model ``name``; returns where it is cached."""
    card = _card(name)
    if progress is not None:
        progress(None, f"fetching {name}")
    if card.backend.startswith("stardist"):
        from ..core.registry import stardist_cache_dir
        from .stardist.predict import load_pretrained

        load_pretrained(name)
        return str(stardist_cache_dir(name, 3 if card.backend == "stardist3d" else 2))
    if card.backend == "fasterrcnn":
        return _torchvision_coco()
    raise ModelNotFound(f"no downloader for {card.backend}")  # pragma: no cover


def _torchvision_coco() -> str:
    import socket
    from pathlib import Path

    import torch
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from ..core.registry import DOWNLOAD_TIMEOUT_S, ModelUnavailable

    weights = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a firewall that drops packets must not hang the job
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise ModelUnavailable(
            f"torchvision's COCO weights for Faster R-CNN are not in the local cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Connect to the internet once to fetch them (they are cached "
            "afterwards).") from exc
    finally:
        socket.setdefaulttimeout(old_timeout)
    return str(Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name)


def download_job_name(name: str) -> str:
    """The worker job that downloads pretrained model ``name`` (it runs in its framework's worker)."""
    return "stardist.download" if _card(name).backend.startswith("stardist") else "torchvision.download"


def download_job(progress, name: str):
    return download(name, progress)
