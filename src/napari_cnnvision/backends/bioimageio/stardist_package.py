"""bioimage.io packages of StarDist models (ours and StarDist's own): recognised by their
``config.stardist`` (the StarDist config, thresholds and the name of the Keras weights file,
attached to the package) and run as a StarDist model, i.e. by StarDist's own network code and
post-processing (non-maximum suppression of star-convex polygons) in the TensorFlow worker.

A package folder that is already a StarDist model folder (``config.json`` and the weights at its
root, as our exports are) is used as it is; otherwise (a zip, StarDist's own layout) the three
files are written to a cache folder, the weights after checking their sha256. Read from the
package's YAML: no framework and no bioimageio.spec import here.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from ...core.registry import CorruptModel, ModelCard
from .package import _sha256

WEIGHTS_NAME = "weights_best.h5"  # what StarDist2D(None, name, basedir) loads


def stardist_config(raw: dict) -> dict | None:
    """``config.stardist`` of a StarDist package's YAML (with ``config``, ``thresholds``,
    ``weights``), else None."""
    cfg = raw.get("config") if isinstance(raw, dict) else None
    sd = cfg.get("stardist") if isinstance(cfg, dict) else None
    if isinstance(sd, dict) and isinstance(sd.get("config"), dict) and sd.get("weights"):
        return sd
    return None


def _member(path: Path, name: str):
    """A readable file of the package (folder or zip) by its name in the description, or None."""
    name = str(name)
    if "://" in name or name.startswith("/") or ".." in Path(name).parts:
        return None
    if path.is_dir():
        return path / name
    return zipfile.Path(zipfile.ZipFile(path), at=Path(name).as_posix())


def _attachment(raw: dict, name: str) -> tuple[str | None, str | None]:
    """(the attachment's source, its sha256) of the attached file called ``name``."""
    att = raw.get("attachments") or []
    if isinstance(att, dict):  # format 0.4: {files: [...]}
        att = [{"source": f} for f in att.get("files") or []]
    for a in att:
        src = a.get("source") if isinstance(a, dict) else a
        if src is not None and Path(str(src)).name == name:
            return str(src), (a.get("sha256") if isinstance(a, dict) else None)
    return None, None


def _normalization(raw: dict, where: str) -> dict:
    """The card normalization of the package's ``scale_range`` preprocessing (percentiles)."""
    for op in (raw.get("inputs") or [{}])[0].get("preprocessing") or []:
        if isinstance(op, dict) and (op.get("id") or op.get("name")) == "scale_range":
            k = op.get("kwargs") or {}
            return {"type": "percentile", "pmin": float(k.get("min_percentile", 0.0)),
                    "pmax": float(k.get("max_percentile", 100.0))}
    raise CorruptModel(f"{where}: a StarDist package without scale_range preprocessing cannot be run here")


def stardist_folder(path: Path, raw: dict, sd: dict, cache_dir: Path) -> Path:
    """A StarDist model folder for the package: ``path`` itself if it is one, else a cache folder."""
    weights = Path(str(sd["weights"])).name
    src, want = _attachment(raw, weights)
    file = _member(path, src) if src is not None else None
    if file is None or not file.is_file():
        raise CorruptModel(f"{path}: the StarDist weights {weights} named in config.stardist are not attached "
                           "to the package")
    got = _sha256(file)
    if want is not None and got != str(want):
        raise CorruptModel(f"{path}: the StarDist weights {weights} do not match their sha256 in the description "
                           "(damaged or replaced); not loading them")
    if path.is_dir() and (path / "config.json").is_file() and src == WEIGHTS_NAME:
        return path
    folder = cache_dir / hashlib.sha256(f"{path.resolve()}:{got}".encode()).hexdigest()[:16]
    if not (folder / WEIGHTS_NAME).is_file():
        from ...core.io import staged_dir

        with staged_dir(folder) as tmp:
            (tmp / "config.json").write_text(json.dumps(sd["config"]), encoding="utf-8")
            thr = {k: float(v) for k, v in (sd.get("thresholds") or {}).items() if k in ("prob", "nms")}
            (tmp / "thresholds.json").write_text(json.dumps(thr), encoding="utf-8")
            with file.open("rb") as fin, open(tmp / WEIGHTS_NAME, "wb") as fout:
                fout.write(fin.read())
    return folder


def stardist_card(path: Path, raw: dict, sd: dict, source: str, warnings_: list[str]) -> ModelCard:
    """The registry card of a StarDist package: backend ``stardist2d`` on its StarDist folder."""
    from ...core.registry import user_data_dir
    from .package import rdf_name, slug

    cfg = sd["config"]
    if int(cfg.get("n_dim", 2)) != 2:
        raise CorruptModel(f"{path} is a {cfg.get('n_dim')}-D StarDist package; only 2-D ones can be run here")
    if cfg.get("n_classes"):
        raise CorruptModel(f"{path} is a multi-class StarDist package; it cannot be run here")
    norm = _normalization(raw, str(path))
    folder = stardist_folder(Path(path), raw, sd, user_data_dir() / "cache" / "bioimageio-stardist")
    n_ch = int(cfg.get("n_channel_in", 1))
    name = str(raw.get("name") or Path(path).stem)
    weights = [k for k, v in (raw.get("weights") or {}).items() if v is not None]
    return ModelCard(name=slug(name), task="segment", backend="stardist2d", classes=["nucleus"],
                     axes="YXC" if n_ch > 1 else "YX", channels=n_ch, normalization=norm,
                     description=str(raw.get("description") or name), source=source, path=str(folder),
                     extra={"bioimageio": {"name": name, "rdf": rdf_name(path), "package": str(path),
                                           "format_version": str(raw.get("format_version")), "weights": weights,
                                           "stardist": True, "warnings": warnings_}})
