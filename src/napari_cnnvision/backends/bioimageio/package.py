"""Read a bioimage.io model package (a folder with ``bioimageio.yaml``/``rdf.yaml``, or its zip)
with ``bioimageio.spec`` and map it onto what the Segment widget can run.

No framework is imported here; ``bioimageio.spec`` is imported inside the functions (it takes
seconds), so importing this module is cheap. Nothing is downloaded: descriptions are read with
``perform_io_checks=False`` and only weights that are files inside the package are used, each
checked against its ``sha256`` before loading (:func:`verified_weights`).
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ...core.registry import CorruptModel, ModelCard, ModelNotFound

RDF_NAMES = ("bioimageio.yaml", "rdf.yaml")
BACKEND = "bioimageio"
#: weights formats run here (in the torch worker), in the order tried by default
RUNNABLE = ("torchscript", "pytorch_state_dict", "onnx")
#: weights formats run in the TensorFlow worker (never in a process with PyTorch)
TF_RUNNABLE = ("keras_hdf5",)
_MEMO: dict = {}


def rdf_name(path: str | Path) -> str | None:
    """The description file of a package folder or zip (``None``: not a package). Cheap."""
    p = Path(path)
    if p.is_dir():
        names = [n for n in RDF_NAMES if (p / n).is_file()]
        return names[0] if names else None
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                inside = set(z.namelist())
        except (OSError, zipfile.BadZipFile):
            return None
        names = [n for n in RDF_NAMES if n in inside]
        return names[0] if names else None
    return None


def is_package(path: str | Path) -> bool:
    return rdf_name(path) is not None


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "bioimageio-model"


def _raw_yaml(path: Path, name: str) -> dict:
    import yaml

    try:
        if path.is_dir():
            text = (path / name).read_text(encoding="utf-8")
        else:
            with zipfile.ZipFile(path) as z:
                text = z.read(name).decode("utf-8")
        d = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError, zipfile.BadZipFile) as exc:
        raise CorruptModel(f"cannot read the bioimage.io description {path}/{name}: {exc}") from exc
    if not isinstance(d, dict):
        raise CorruptModel(f"the bioimage.io description {path}/{name} is not a YAML mapping")
    return d


def _drop(d: dict, loc: tuple) -> bool:
    """Delete the key at ``loc`` (a pydantic error location) from the nested dict/list ``d``."""
    node = d
    for k in loc[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def _errors(descr) -> list:
    return [e for det in descr.validation_summary.details for e in det.errors]


def load_package(path: str | Path):
    """``(description, warnings)`` of the model package at ``path`` (memoized by file times).

    A description of another type (dataset, application, ...) or a folder/zip without one raises
    :class:`ModelNotFound`; an invalid model description :class:`CorruptModel`. Unknown fields
    are dropped with a warning (the rest is validated as usual)."""
    path = Path(path)
    name = _check_path(path)
    stamp = (str(path.resolve()), path.stat().st_mtime_ns, (path / name).stat().st_mtime_ns if path.is_dir() else 0)
    if stamp in _MEMO:
        return _MEMO[stamp]
    raw = _raw_yaml(path, name)
    kind = raw.get("type")
    if kind != "model":
        raise ModelNotFound(f"{path} is a bioimage.io {kind or 'untyped'} description, not a model: "
                            "only model packages can segment")
    from bioimageio.spec import InvalidDescr, ValidationContext, build_description, load_description
    from bioimageio.spec._io import open_bioimageio_yaml

    with ValidationContext(perform_io_checks=False):
        descr = load_description(path, format_version="latest")
    warnings_: list[str] = []
    if isinstance(descr, InvalidDescr):
        extra = [e for e in _errors(descr) if getattr(e, "type", "") == "extra_forbidden"]
        opened = open_bioimageio_yaml(path)
        content = dict(opened.content)
        if extra and len(extra) == len(_errors(descr)) and all(_drop(content, tuple(e.loc)) for e in extra):
            fields = ", ".join(".".join(map(str, e.loc)) for e in extra)
            warnings_.append(f"{path}: unknown field(s) {fields} in {name} were ignored")
            ctx = ValidationContext(root=opened.original_root, file_name=opened.original_file_name,
                                    perform_io_checks=False)
            descr = build_description(content, context=ctx, format_version="latest")
    if isinstance(descr, InvalidDescr):
        errs = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in _errors(descr)[:3])
        raise CorruptModel(f"{path}: invalid bioimage.io model description ({errs})")
    if getattr(descr, "type", None) != "model":
        raise ModelNotFound(f"{path} is a bioimage.io {descr.type} description, not a model")
    _MEMO.clear()
    _MEMO[stamp] = (descr, warnings_)
    return descr, warnings_


@dataclass
class Mapping:
    """How a package's single input/output maps onto a 2-D (YX[C]) segmentation."""

    input_id: str
    input_axes: tuple[str, ...]  # axis ids in the tensor's order, e.g. ("batch", "channel", "y", "x")
    output_id: str
    output_axes: tuple[str, ...]
    in_channels: int
    out_channels: list[str]  # output channel names
    roles: list[str]  # per output channel: "foreground", "boundary" or "background"
    window: dict[str, tuple[int, int]]  # space axis -> (min size, step; 0 = fixed size)
    halo: dict[str, int] = field(default_factory=dict)  # space axis -> output halo


def _size(ax):
    s = getattr(ax, "size", None)
    if isinstance(s, int):
        return s, 0
    if hasattr(s, "min") and hasattr(s, "step"):
        return int(s.min), int(s.step)
    return None


def _role(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("bound", "contour", "edge", "border")):
        return "boundary"
    if any(k in n for k in ("background", "bg")):
        return "background"
    return "foreground"


def mapping(descr, where: str = "the package", roles: bool = True) -> Mapping:
    """Check that the model is one the Segment widget can run: one 2-D image in, one map of
    foreground (and optionally boundary / background) probabilities of the same size out.
    Anything else raises :class:`CorruptModel` saying why. ``roles=False``: any output channels
    (a test-tensor check, a StarDist package's probability + distances)."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise CorruptModel(f"{where} has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); the "
                           "Segment widget can run only models with one image in and one probability map out")
    ipt, out = descr.inputs[0], descr.outputs[0]
    space = [str(a.id) for a in ipt.axes if a.type == "space"]
    others = [f"{a.id} ({a.type})" for a in ipt.axes if a.type not in ("space", "batch", "channel")]
    if len(space) != 2 or others or set(space) != {"y", "x"}:
        what = f"{len(space)}-D" if len(space) != 2 else "axes " + ",".join(str(a.id) for a in ipt.axes)
        raise CorruptModel(f"{where} is a {what} model (input axes {', '.join(str(a.id) for a in ipt.axes)}); "
                           "the Segment widget can run only 2-D (y, x [, channel]) models")
    ch = [a for a in ipt.axes if a.type == "channel"]
    n_in = len(ch[0].channel_names) if ch else 1
    window = {}
    for a in ipt.axes:
        if a.type == "space":
            s = _size(a)
            if s is None:
                raise CorruptModel(f"{where}: input axis {a.id} has a size this plugin cannot plan tiles for")
            window[str(a.id)] = s
    out_space = [a for a in out.axes if a.type == "space"]
    if {str(a.id) for a in out_space} != set(space) or any(
            getattr(a.size, "tensor_id", None) != ipt.id and _size(a) != window.get(str(a.id))
            for a in out_space):
        raise CorruptModel(f"{where}: its output is not a y, x map of the input's size; the Segment widget "
                           "cannot turn it into labels")
    if any(a.type not in ("space", "batch", "channel") for a in out.axes):
        raise CorruptModel(f"{where}: output axes {', '.join(str(a.id) for a in out.axes)} cannot be mapped")
    och = [a for a in out.axes if a.type == "channel"]
    names = [str(n) for n in och[0].channel_names] if och else ["foreground"]
    kinds = [_role(n) for n in names] if len(names) > 1 else ["foreground"]
    if not roles:
        kinds = []
    elif kinds.count("foreground") != 1 or len(names) > 3 or len(set(kinds)) != len(kinds):
        raise CorruptModel(f"{where}: output channels {names} cannot be mapped to foreground / boundary / "
                           "background probabilities")
    halo = {str(a.id): int(getattr(a, "halo", 0) or 0) for a in out_space}
    return Mapping(str(ipt.id), tuple(str(a.id) for a in ipt.axes), str(out.id), tuple(str(a.id) for a in out.axes),
                   n_in, names, kinds, window, halo)


def weight_formats(descr) -> list[str]:
    """The weights formats the package has (any, also those not runnable here)."""
    names = ("torchscript", "pytorch_state_dict", "onnx", "keras_hdf5", "keras_v3", "tensorflow_saved_model_bundle",
             "tensorflow_js")
    return [k for k in names if getattr(descr.weights, k, None) is not None]


def _local_file(root, source) -> tuple[object | None, str]:
    """(readable path inside the package or None for a URL, the name as written)."""
    text = str(source)
    if re.match(r"^[a-z]+://", text):
        return None, text
    rel = getattr(source, "path", None)
    name = Path(str(rel)).as_posix() if rel is not None else text
    if isinstance(root, zipfile.ZipFile):  # a zipped package
        return zipfile.Path(root, at=name), name
    return (root / name if isinstance(root, (Path, zipfile.Path)) else Path(str(root)) / name), name


def _sha256(p) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runnable_formats(have) -> list[str]:
    """The formats of ``have`` to try, in order: the torch worker's, or else (a Keras-only
    package) the TensorFlow worker's -- one process never runs both frameworks."""
    return [f for f in RUNNABLE if f in have] or [f for f in TF_RUNNABLE if f in have]


def framework_of_formats(have) -> str:
    """The worker framework that runs a package with weights formats ``have``: ``"tf"`` when
    its only runnable weights are Keras, else ``"torch"``."""
    fmts = runnable_formats(have)
    return "tf" if fmts and fmts[0] in TF_RUNNABLE else "torch"


def verified_weights(descr, fmt: str | None = None, where: str = "the package", runnable=None) -> str:
    """The weights format to run: ``fmt``, or the first of ``runnable`` (default:
    :func:`runnable_formats`) that the package has as a local file. The chosen file's sha256 is
    checked; a missing file, a hash mismatch or an unsupported format raises :class:`CorruptModel`."""
    have = weight_formats(descr)
    runnable = runnable_formats(have) if runnable is None else runnable
    if fmt is not None and fmt not in RUNNABLE + TF_RUNNABLE:
        raise CorruptModel(f"{where}: weights format {fmt!r} is not supported here (supported: "
                           f"{', '.join(RUNNABLE + TF_RUNNABLE)})")
    cands = [fmt] if fmt is not None else [f for f in runnable if f in have]
    if not cands:
        raise CorruptModel(f"{where} has weights in {', '.join(have) or 'no'} format(s); this plugin runs "
                           f"{', '.join(RUNNABLE + TF_RUNNABLE)}")
    remote = []
    for f in cands:
        entry = getattr(descr.weights, f, None)
        if entry is None:
            raise CorruptModel(f"{where} has no {f} weights (it has {', '.join(have)})")
        file, name = _local_file(descr.root, entry.source)
        if file is None:
            remote.append(f)
            if fmt is None:
                continue  # a URL: not downloaded; try the next format
            raise CorruptModel(f"{where}: the {f} weights are a URL ({name}); nothing is downloaded")
        if f == "pytorch_state_dict":
            arch = getattr(entry.architecture, "source", None)
            if arch is None or _local_file(descr.root, arch)[0] is None:
                remote.append(f)
                if fmt is None:
                    continue
                raise CorruptModel(f"{where}: the pytorch_state_dict weights need an architecture file in the package")
        if not file.is_file():
            raise CorruptModel(f"{where}: the {f} weights file {name} is missing")
        want = getattr(entry, "sha256", None)
        if want is not None and _sha256(file) != str(want):
            raise CorruptModel(f"{where}: the {f} weights file {name} does not match its sha256 in the "
                               "description (damaged or replaced); not loading it")
        return f
    raise CorruptModel(f"{where}: no weights inside the package can be run here ({', '.join(remote)} are URLs; "
                       "nothing is downloaded)")


def _check_path(path: Path) -> str:
    """The description file's name of the package at ``path``; ModelNotFound if there is none."""
    if not path.exists():
        raise ModelNotFound(f"no model folder or package at {path}")
    name = rdf_name(path)
    if name is None:
        what = "zip" if path.is_file() else "folder"
        raise ModelNotFound(f"{path} is not a bioimage.io package (no {' or '.join(RDF_NAMES)} in the {what})")
    return name


def package_card(path: str | Path, source: str = "path", validate: bool = False) -> ModelCard:
    """A registry card for the package at ``path`` (task "segment", backend "bioimageio"; a
    StarDist package: backend "stardist2d", see :mod:`.stardist_package`).

    Read from the YAML alone where it can be (:mod:`.quick`; no ``bioimageio.spec`` import, so a
    widget does not stall): the full validation then happens where the model runs. ``validate``
    (or a description the quick reader does not know): validated with ``bioimageio.spec`` now."""
    from .quick import quick_card
    from .stardist_package import stardist_card, stardist_config

    path = Path(path)
    name = _check_path(path)
    raw = _raw_yaml(path, name)
    if raw.get("type") != "model":
        raise ModelNotFound(f"{path} is a bioimage.io {raw.get('type') or 'untyped'} description, not a model: "
                            "only model packages can segment")
    warnings_: list[str] = []
    if validate:
        warnings_ = list(load_package(path)[1])
    sd = stardist_config(raw)
    if sd is not None:
        return stardist_card(path, raw, sd, source, warnings_)
    if not validate:
        card = quick_card(path, raw, name, source)
        if card is not None:
            return card
    descr, warnings_ = load_package(path)
    m = mapping(descr, str(path))
    tags = [str(t).lower() for t in (descr.tags or [])]
    classes = ["nucleus"] if any(t.startswith("nucle") for t in tags) else ["object"]
    return ModelCard(name=slug(descr.name), task="segment", backend=BACKEND, classes=classes,
                     axes="YXC" if m.in_channels > 1 else "YX", channels=m.in_channels,
                     description=str(descr.description or descr.name), source=source, path=str(path),
                     extra={"bioimageio": {"name": str(descr.name), "rdf": name,
                                           "format_version": str(descr.format_version),
                                           "weights": weight_formats(descr), "outputs": m.out_channels,
                                           "warnings": warnings_, "validated": True},
                            "framework": framework_of_formats(weight_formats(descr)), **_our_config(descr)})


def _our_thresholds(ours) -> dict:
    """``{"thresholds": ...}`` of what a package exported by this plugin keeps in ``config.napari_cnnvision``."""
    thr = ours.get("thresholds") if isinstance(ours, dict) else None
    if not isinstance(thr, dict):
        return {}
    keep = {k: v for k, v in thr.items() if k in ("seed", "fg", "min_size") and isinstance(v, (int, float))}
    return {"thresholds": keep} if keep else {}


def _our_config(descr) -> dict:
    """What a package exported by this plugin keeps in ``config.napari_cnnvision``: its thresholds."""
    cfg = getattr(descr, "config", None)
    ours = (getattr(cfg, "model_extra", None) or {}).get("napari_cnnvision") if cfg is not None else None
    return _our_thresholds(ours)
