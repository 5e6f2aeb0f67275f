"""Export a U-Net model folder as a bioimage.io model package (TorchScript weights).

The package describes what the plugin does before and after the network: ``scale_range`` over
the whole image at the card's percentiles (the plugin's percentile normalization), the network,
``softmax`` over the background / interior / boundary channels; its input takes any size of
``min + k * 2**depth`` pixels and its output declares the U-Net's tile overlap as ``halo``. The
watershed thresholds go into ``config.napari_cnnvision`` (read back on import). Test tensors come
from a real image. The written description is validated with ``bioimageio.spec`` and the package
is checked against its own test tensors before the folder is put in place (atomically).
PyTorch is imported inside the functions; this runs in the torch worker or a CLI process.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...core.registry import CorruptModel, ModelCard

CITE = [{"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional networks for biomedical image "
                 "segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _readme(card: ModelCard) -> str:
    lines = [f"# {card.name}", "", card.description or "", "",
             "Exported by napari-cnnvision (`napari-cnnvision models export`). Instances: seeded watershed on the "
             "interior probability (seeds above the seed threshold), grown inside interior + boundary above the "
             "foreground threshold; thresholds in `config.napari_cnnvision.thresholds`.", ""]
    if card.training:
        lines += ["## Training", ""] + [f"- **{k}**: {v}" for k, v in card.training.items()
                                         if isinstance(v, (str, int, float))] + [""]
    if card.metrics:
        lines += ["## Validation metrics", ""] + [f"- {k}: {v}" for k, v in card.metrics.items()] + [""]
    return "\n".join(lines)


def export_unet(card: ModelCard, dest: str | Path, test_image: np.ndarray, license: str = "BSD-3-Clause",
                authors: list[str] | None = None) -> Path:
    """Write ``card``'s U-Net as a bioimage.io package folder ``dest``; ``test_image`` (YX or YXC,
    raw intensities) becomes the test input. Returns ``dest``."""
    import torch
    import yaml

    from ...core.io import staged_dir
    from ...core.normalize import resolve_normalization
    from ..unet.io import load_model
    from ..unet.predict import default_overlap, predict_probs
    from .check import check_package
    from .package import load_package, mapping

    if card.backend != "unet" or not card.path:
        raise CorruptModel(f"model {card.name!r} ({card.backend}): only U-Net model folders can be exported here")
    loaded = load_model(card.path)
    cfg, model = loaded.config, loaded.model.cpu().eval()
    norm = resolve_normalization(card.normalization, None, None, f"model {card.name!r}")
    if norm["type"] != "percentile":
        raise CorruptModel(f"model {card.name!r}: only a percentile normalization can be exported")
    img = np.asarray(test_image, np.float32)
    x = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)  # (C, H, W)
    if x.shape[0] != cfg.in_channels:
        raise CorruptModel(f"the test image has {x.shape[0]} channel(s); {card.name!r} takes {cfg.in_channels}")
    step = 2 ** cfg.depth
    halo = default_overlap(cfg.depth)
    h, w = (s - s % step for s in x.shape[1:])
    x = x[:, :h, :w]
    from ...core.normalize import percentile_normalize

    xn = percentile_normalize(x, norm["pmin"], norm["pmax"])
    probs = predict_probs(model, xn, tile_size=None)[None]  # (1, 3, H, W): softmax of the logits
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.from_numpy(xn[None]))
        other = torch.from_numpy(np.ascontiguousarray(xn[None, :, : h - step, : w - step]))
        if not torch.allclose(traced(other), model(other), atol=1e-4):
            raise CorruptModel(f"model {card.name!r}: the traced network differs from the original on another size")
    thr = dict(loaded.thresholds)
    names = {1: ["raw"], 3: ["red", "green", "blue"]}.get(cfg.in_channels, [f"c{i}" for i in range(cfg.in_channels)])
    from bioimageio.spec.model.v0_5 import ModelDescr

    dest = Path(dest)
    with staged_dir(dest) as tmp:
        torch.jit.save(traced, str(tmp / "weights.pt"))
        np.save(tmp / "test_input.npy", x[None].astype(np.float32))
        np.save(tmp / "test_output.npy", probs.astype(np.float32))
        (tmp / "README.md").write_text(_readme(card), encoding="utf-8")
        space = {"min": 2 * halo + step, "step": step}
        rdf = {
            "format_version": str(ModelDescr.implemented_format_version), "type": "model", "name": card.name,
            "description": card.description or f"U-Net {card.name}",
            "authors": [{"name": a} for a in (authors or ["napari-cnnvision"])],
            "cite": CITE, "license": license,
            "documentation": {"source": "README.md", "sha256": _sha(tmp / "README.md")},
            "tags": ["unet", "pytorch", "segmentation", "2d"] + [str(c) for c in card.classes],
            "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": names},
                                              {"id": "y", "type": "space", "size": space},
                                              {"id": "x", "type": "space", "size": space}],
                        "test_tensor": {"source": "test_input.npy", "sha256": _sha(tmp / "test_input.npy")},
                        "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                          {"id": "scale_range", "kwargs": {
                                              "axes": ["channel", "y", "x"], "min_percentile": norm["pmin"],
                                              "max_percentile": norm["pmax"]}}]}],
            "outputs": [{"id": "probabilities",
                         "axes": [{"type": "batch"},
                                  {"type": "channel", "channel_names": ["background", "interior", "boundary"]},
                                  *({"id": a, "type": "space", "halo": halo, "size": {"tensor_id": "raw", "axis_id": a}}
                                    for a in ("y", "x"))],
                         "test_tensor": {"source": "test_output.npy", "sha256": _sha(tmp / "test_output.npy")},
                         "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}]}],
            "weights": {"torchscript": {"source": "weights.pt", "sha256": _sha(tmp / "weights.pt"),
                                        "pytorch_version": torch.__version__.split("+")[0]}},
            "config": {"napari_cnnvision": {"thresholds": thr, "card": card.to_json()}},
        }
        (tmp / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")
        descr, warnings_ = load_package(tmp)  # bioimageio.spec validation
        if warnings_:
            raise CorruptModel(f"the exported description is not clean: {warnings_[0]}")
        mapping(descr, str(tmp))
        failed = [r for r in check_package(tmp) if not r.passed]
        if failed:
            raise CorruptModel(f"the exported package fails its own test tensors: {failed[0].message}")
    return dest
