"""Export our models as bioimage.io model packages: what every export shares, the U-Net's export
(TorchScript weights) and the export job that the worker runs.

The U-Net package describes what the plugin does before and after the network: ``scale_range``
over the whole image at the card's percentiles (the plugin's percentile normalization), the
network, ``softmax`` over the background / interior / boundary channels; its input takes any size
of ``min + k * 2**depth`` pixels and its output declares the U-Net's tile overlap as ``halo``. The
watershed thresholds go into ``config.napari_cnnvision`` (read back on import). StarDist models:
:mod:`.export_stardist`. Test tensors come from a real image. Every written description is
validated with ``bioimageio.spec`` and the package is checked against its own test tensors before
the folder is put in place (atomically). PyTorch / TensorFlow are imported inside the functions:
an export runs in the framework's worker or a CLI process.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...core.progress import NULL_PROGRESS
from ...core.registry import CorruptModel, ModelCard

CITE = [{"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional networks for biomedical image "
                 "segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}]
#: backend -> the worker job that exports it (its framework's worker)
EXPORT_JOBS = {"unet": "bioimageio.export_unet", "stardist2d": "bioimageio.export_stardist"}


def export_job_name(card: ModelCard) -> str:
    """The worker job that exports ``card``; a model we cannot export raises :class:`CorruptModel`."""
    job = EXPORT_JOBS.get(card.backend)
    if job is None or not card.path or card.source == "pretrained":
        raise CorruptModel(f"model {card.name!r} ({card.backend}, {card.source}): only U-Net and 2-D StarDist "
                           "model folders (shipped, trained or added) can be exported as bioimage.io packages")
    return job


def valid_crop(x: np.ndarray, lo: int, step: int, cap: int, name: str) -> np.ndarray:
    """A centred crop of the (Y, X, ...) image ``x`` whose sides are valid input sizes
    (``lo + k * step``), as large as the image allows up to ``cap``; a side shorter than ``lo`` is
    first mirrored out to ``lo``. bioimage.io runs the test input as it is, so it must fit the
    input's declared sizes."""
    h, w = x.shape[:2]
    if min(h, w) < 2:
        raise CorruptModel(f"the test image ({h}x{w}) is too small to test {name!r}")
    while min(x.shape[:2]) < lo:  # symmetric padding adds at most the side's length per pass
        pads = [((lo - n) // 2 if n < lo else 0, 0) for n in x.shape[:2]]
        pads = [(min(a, n), min(lo - n - min(a, n), n) if n < lo else 0) for (a, _), n in zip(pads, x.shape[:2])]
        x = np.pad(x, pads + [(0, 0)] * (x.ndim - 2), mode="symmetric")
    h, w = x.shape[:2]
    sy, sx = (lo + (min(n, max(cap, lo)) - lo) // step * step for n in (h, w))
    y0, x0 = (h - sy) // 2, (w - sx) // 2
    return x[y0:y0 + sy, x0:x0 + sx]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def file_entry(folder: Path, name: str) -> dict:
    return {"source": name, "sha256": sha(folder / name)}


def readme(card: ModelCard, how: str) -> str:
    """The package's documentation: the card's description, ``how`` (the post-processing), its
    training data and validation metrics."""
    lines = [f"# {card.name}", "", card.description or "", "",
             f"Exported by napari-cnnvision (`napari-cnnvision models export`). {how}", ""]
    if card.training:
        lines += ["## Training", ""] + [f"- **{k}**: {v}" for k, v in card.training.items()
                                         if isinstance(v, (str, int, float))] + [""]
    if card.metrics:
        lines += ["## Validation metrics", ""]
        for split, v in card.metrics.items():
            if isinstance(v, dict):
                lines += [f"- {split}: " + ", ".join(f"{k} {x}" for k, x in v.items())]
            else:
                lines += [f"- {split}: {v}"]
        lines += [""]
    return "\n".join(lines)


def base_rdf(card: ModelCard, tmp: Path, how: str, cite: list, tags: list, license: str,
             authors: list[str] | None) -> dict:
    """The RDF fields every export shares (writes README.md into ``tmp``)."""
    from bioimageio.spec.model.v0_5 import ModelDescr

    (tmp / "README.md").write_text(readme(card, how), encoding="utf-8")
    return {"format_version": str(ModelDescr.implemented_format_version), "type": "model", "name": card.name,
            "description": card.description or f"{card.backend} model {card.name}",
            "authors": [{"name": a} for a in (authors or ["napari-cnnvision"])],
            "cite": cite, "license": license, "documentation": file_entry(tmp, "README.md"),
            "tags": tags + [str(c) for c in card.classes]}


def finish(tmp: Path, rdf: dict, weights: str) -> None:
    """Write ``rdf.yaml``, validate it with bioimageio.spec and run the package's test tensors
    with its ``weights`` format; any failure raises :class:`CorruptModel` (nothing is kept)."""
    import yaml

    from .check import check_package
    from .package import load_package

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    (tmp / "rdf.yaml").write_text(yaml.dump(rdf, Dumper=_NoAliases, sort_keys=False), encoding="utf-8")
    descr, warnings_ = load_package(tmp)  # bioimageio.spec validation
    if warnings_:
        raise CorruptModel(f"the exported description is not clean: {warnings_[0]}")
    failed = [r for r in check_package(tmp, weights) if not r.passed]
    if failed:
        raise CorruptModel(f"the exported package fails its own test tensors: {failed[0].message}")


def export_unet(card: ModelCard, dest: str | Path, test_image: np.ndarray, license: str = "BSD-3-Clause",
                authors: list[str] | None = None, progress=NULL_PROGRESS) -> Path:
    """Write ``card``'s U-Net as a bioimage.io package folder ``dest``; ``test_image`` (YX or YXC,
    raw intensities) becomes the test input. Returns ``dest``."""
    import torch

    from ...core.io import staged_dir
    from ...core.normalize import percentile_normalize, resolve_normalization
    from ..unet.io import load_model
    from ..unet.predict import default_overlap
    from .package import load_package, mapping

    if card.backend != "unet" or not card.path:
        raise CorruptModel(f"model {card.name!r} ({card.backend}): only U-Net model folders can be exported here")
    progress(0.05, f"loading {card.name}")
    loaded = load_model(card.path)
    cfg, model = loaded.config, loaded.model.cpu().eval()
    norm = resolve_normalization(card.normalization, None, None, f"model {card.name!r}")
    if norm["type"] != "percentile":
        raise CorruptModel(f"model {card.name!r}: only a percentile normalization can be exported")
    img = np.asarray(test_image, np.float32)
    img = img[..., None] if img.ndim == 2 else img
    if img.ndim != 3 or img.shape[-1] != cfg.in_channels:
        raise CorruptModel(f"the test image has shape {np.shape(test_image)}; {card.name!r} takes "
                           f"{cfg.in_channels} channel(s)")
    step = 2 ** cfg.depth
    halo = default_overlap(cfg.depth)
    x = np.moveaxis(valid_crop(img, 2 * halo + step, step, 256, card.name), -1, 0)  # (C, H, W)
    h, w = x.shape[1:]
    xn = percentile_normalize(x, norm["pmin"], norm["pmax"])
    progress(0.2, "tracing the network")
    with torch.no_grad():
        # the test output: the network on the test input as it is (no added context), as bioimage.io tests it
        probs = torch.softmax(model(torch.from_numpy(xn[None])), dim=1).numpy()  # (1, 3, H, W)
        traced = torch.jit.trace(model, torch.from_numpy(xn[None]))
        other = torch.from_numpy(np.ascontiguousarray(xn[None, :, : h - step, : w - step]))
        if not torch.allclose(traced(other), model(other), atol=1e-4):
            raise CorruptModel(f"model {card.name!r}: the traced network differs from the original on another size")
    thr = dict(loaded.thresholds)
    names = {1: ["raw"], 3: ["red", "green", "blue"]}.get(cfg.in_channels, [f"c{i}" for i in range(cfg.in_channels)])
    how = ("Instances: seeded watershed on the interior probability (seeds above the seed threshold), grown "
           "inside interior + boundary above the foreground threshold; thresholds in "
           "`config.napari_cnnvision.thresholds`.")
    with staged_dir(Path(dest)) as tmp:
        torch.jit.save(traced, str(tmp / "weights.pt"))
        np.save(tmp / "test_input.npy", x[None].astype(np.float32))
        np.save(tmp / "test_output.npy", probs.astype(np.float32))
        space = {"min": 2 * halo + step, "step": step}
        rdf = base_rdf(card, tmp, how, CITE, ["unet", "pytorch", "segmentation", "2d"], license, authors)
        rdf.update({
            "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": names},
                                              {"id": "y", "type": "space", "size": space},
                                              {"id": "x", "type": "space", "size": space}],
                        "test_tensor": file_entry(tmp, "test_input.npy"),
                        "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                          {"id": "scale_range", "kwargs": {
                                              "axes": ["channel", "y", "x"], "min_percentile": norm["pmin"],
                                              "max_percentile": norm["pmax"]}}]}],
            "outputs": [{"id": "probabilities",
                         "axes": [{"type": "batch"},
                                  {"type": "channel", "channel_names": ["background", "interior", "boundary"]},
                                  *({"id": a, "type": "space", "halo": halo, "size": {"tensor_id": "raw", "axis_id": a}}
                                    for a in ("y", "x"))],
                         "test_tensor": file_entry(tmp, "test_output.npy"),
                         "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}]}],
            "weights": {"torchscript": {**file_entry(tmp, "weights.pt"),
                                        "pytorch_version": torch.__version__.split("+")[0]}},
            "config": {"napari_cnnvision": {"thresholds": thr, "card": card.to_json()}},
        })
        progress(0.6, "validating the package and running its test tensors")
        finish(tmp, rdf, "torchscript")
        mapping(load_package(tmp)[0], str(tmp))
    return Path(dest)


def export_model(card: ModelCard, dest: str | Path, test_image: np.ndarray | None = None,
                 progress=NULL_PROGRESS, overwrite: bool = False, **kwargs) -> Path:
    """Export ``card`` (U-Net or 2-D StarDist) to the package folder ``dest``, which must not exist
    unless ``overwrite`` (then it is replaced once the new package has passed its checks).
    ``test_image``: default the bundled 2-D nuclei sample."""
    job = export_job_name(card)
    dest = Path(dest).expanduser()
    if dest.exists() and not overwrite:
        raise CorruptModel(f"{dest} exists already; choose a new folder (nothing is overwritten)")
    if test_image is None:
        from ...sample_data import load_sample

        test_image = load_sample("nuclei_2d")
    if job == EXPORT_JOBS["stardist2d"]:
        from .export_stardist import export_stardist

        return export_stardist(card, dest, test_image, progress=progress, **kwargs)
    return export_unet(card, dest, test_image, progress=progress, **kwargs)


def export_job(progress, model, dest, test_image=None, **kwargs) -> str:
    """Worker job: export the card payload ``model`` to ``dest``; returns the folder written."""
    from ..dispatch import card_from_payload

    card = card_from_payload(model)
    out = export_model(card, dest, test_image, progress=progress, **kwargs)
    progress(1.0, f"exported {card.name} to {out}")
    return str(out)
