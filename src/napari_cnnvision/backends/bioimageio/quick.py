"""A package's registry card read from its YAML alone, without ``bioimageio.spec`` (whose import and
validation take seconds): what a widget needs when the user browses to a package. The checks that
need no library (its type, one 2-D input and one output of foreground / boundary / background
channels) refuse a package at once; ``bioimageio.spec`` validates the whole description where the
model runs (the worker, ``models add`` / ``check``). Descriptions this reader does not know (format
0.4, unusual fields) return ``None``: the caller then reads them with ``bioimageio.spec``.
"""
from __future__ import annotations

from pathlib import Path

from ...core.registry import CorruptModel, ModelCard

_FORMATS = ("torchscript", "pytorch_state_dict", "onnx", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle",
            "tensorflow_js")


_DEFAULT_ID = {"space": "x", "channel": "channel", "batch": "batch", "time": "time", "index": "index"}


def _id(axis: dict) -> str:
    """An axis' id (bioimageio.spec's default for its type when it has none)."""
    return str(axis.get("id") or _DEFAULT_ID.get(axis.get("type"), axis.get("type")))


def _space_ids(axes: list) -> list[str]:
    return [_id(a) for a in axes if a.get("type") == "space"]


def _channels(axes: list) -> list[str] | None:
    ch = [a for a in axes if a.get("type") == "channel"]
    if not ch:
        return None
    names = ch[0].get("channel_names")
    return [str(n) for n in names] if isinstance(names, list) else None


def quick_card(path: Path, raw: dict, rdf: str, source: str) -> ModelCard | None:
    """The card of the package ``path`` (``raw``: its parsed YAML, ``rdf``: the file's name), or
    ``None`` when only ``bioimageio.spec`` can read it. Raises :class:`CorruptModel` for a model
    the Segment widget cannot map (as :func:`.package.mapping` would)."""
    from .package import _role, slug

    version = str(raw.get("format_version", ""))
    ins, outs = raw.get("inputs"), raw.get("outputs")
    if not version.startswith("0.5.") or not isinstance(ins, list) or not isinstance(outs, list) \
            or not all(isinstance(t, dict) and isinstance(t.get("axes"), list) for t in ins + outs) \
            or not isinstance(raw.get("weights"), dict) or not raw.get("name"):
        return None
    if not all(isinstance(a, dict) for t in ins + outs for a in t["axes"]):
        return None
    where = str(path)
    if len(ins) != 1 or len(outs) != 1:
        raise CorruptModel(f"{where} has {len(ins)} input(s) and {len(outs)} output(s); the Segment widget can run "
                           "only models with one image in and one probability map out")
    space = _space_ids(ins[0]["axes"])
    others = [a for a in ins[0]["axes"] if a.get("type") not in ("space", "batch", "channel")]
    if len(space) != 2 or others or set(space) != {"y", "x"}:
        ids = ", ".join(_id(a) for a in ins[0]["axes"])
        what = f"{len(space)}-D" if len(space) != 2 else "axes " + ids
        raise CorruptModel(f"{where} is a {what} model (input axes {ids}); the Segment widget can run only 2-D "
                           "(y, x [, channel]) models")
    in_names = _channels(ins[0]["axes"])
    n_in = len(in_names) if in_names is not None else 1
    names = _channels(outs[0]["axes"]) or ["foreground"]
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    weights = [k for k in _FORMATS if raw["weights"].get(k) is not None]
    info = {"name": str(raw["name"]), "rdf": rdf, "format_version": version, "weights": weights,
            "outputs": names, "warnings": [], "validated": False}
    tags = [str(t).lower() for t in (raw.get("tags") or [])]
    card = dict(name=slug(raw["name"]), task="segment", classes=["nucleus"] if any(t.startswith("nucle") for t in tags)
                else ["object"], axes="YXC" if n_in > 1 else "YX", channels=n_in,
                description=str(raw.get("description") or raw["name"]), source=source, path=str(path))
    kinds = [_role(n) for n in names] if len(names) > 1 else ["foreground"]
    if kinds.count("foreground") != 1 or len(names) > 3 or len(set(kinds)) != len(kinds):
        raise CorruptModel(f"{where}: output channels {names} cannot be mapped to foreground / boundary / "
                           "background probabilities")
    from .package import BACKEND, _our_thresholds, framework_of_formats

    return ModelCard(backend=BACKEND, extra={"bioimageio": info, "framework": framework_of_formats(weights),
                                             **_our_thresholds(cfg.get("napari_cnnvision"))}, **card)
