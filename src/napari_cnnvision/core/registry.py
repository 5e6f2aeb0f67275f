"""The model registry: every model is a folder with a ``model.json`` card next to its weights.

Sources:

* ``shipped``: folders inside the package (``napari_cnnvision/models``), trained by the
  recipes in ``scripts/``.
* ``pretrained``: models that live on the internet (StarDist's registered models,
  torchvision's COCO weights). They are fetched by those libraries' own
  download-and-cache code the first time they are used; ``path`` is set once cached.
* ``user``: folders in the per-user data folder (``platformdirs``; override with the
  ``NAPARI_CNNVISION_DATA_DIR`` environment variable), where training saves models.

Any folder can also be used directly by path: a ``model.json`` card, a plain
StarDist model folder (``config.json`` + weights), or a bioimage.io model package (a folder
with ``bioimageio.yaml``/``rdf.yaml``, or its zip), which get a card on the fly.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

TASKS = ("segment", "detect", "localize")
CARD_NAME = "model.json"


class ModelNotFound(LookupError):
    """No model of that name, or the folder is not a model."""


class CorruptModel(ValueError):
    """A model folder exists but its card or config cannot be read."""


class ModelUnavailable(RuntimeError):
    """A pretrained model is not cached and could not be downloaded."""


#: seconds a pretrained model's download may stall before it counts as offline
DOWNLOAD_TIMEOUT_S = 30


@dataclass
class ModelCard:
    name: str
    task: str
    backend: str
    classes: list[str] = field(default_factory=list)
    axes: str = "YX"
    channels: int = 1
    normalization: dict = field(default_factory=lambda: {"type": "percentile", "pmin": 1.0, "pmax": 99.8})
    description: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    source: str = "user"
    path: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise CorruptModel(f"model {self.name!r}: task must be one of {TASKS}, not {self.task!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("source")
        d.pop("path")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str, path: str | None) -> "ModelCard":
        known = {f for f in cls.__dataclass_fields__ if f not in ("source", "path")}
        missing = {"name", "task", "backend"} - set(d)
        if missing:
            raise CorruptModel(f"model card at {path} lacks {sorted(missing)}")
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["extra"] = {**d.get("extra", {}),
                           **{k: v for k, v in d.items() if k not in known and k not in ("source", "path")}}
        return cls(**kwargs, source=source, path=path)


def write_card(card: ModelCard, folder: str | Path) -> Path:
    """Write ``model.json`` into ``folder`` atomically."""
    from .io import atomic_write_text

    path = Path(folder) / CARD_NAME
    atomic_write_text(path, json.dumps(card.to_json(), indent=2) + "\n")
    return path


def read_card(folder: str | Path, source: str = "user") -> ModelCard:
    """The card of a model folder. A folder that is missing because a replace of it was
    interrupted (see :func:`~napari_cnnvision.core.io.replace_dir`) is read from its complete
    old copy; ``card.path`` then names that copy."""
    from .io import current_dir

    folder = Path(folder)
    if not folder.exists():
        live = current_dir(folder)
        if live is not None and live != folder:
            card = read_card(live, source)
            if card.name == live.name:  # a name taken from the folder (a StarDist folder without card)
                card.name = folder.name
            return card
    card_path = folder / CARD_NAME
    if card_path.is_file():
        try:
            d = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptModel(f"cannot read the model card {card_path}: {exc}") from exc
        if not isinstance(d, dict):
            raise CorruptModel(f"the model card {card_path} is not a JSON object")
        return ModelCard.from_dict(d, source, str(folder))
    if (folder / "config.json").is_file():
        return _stardist_card(folder, source)
    from ..backends.bioimageio.package import is_package, package_card  # cheap; bioimageio.spec only if it is one

    if folder.suffix.lower() == ".zip" or is_package(folder):
        return package_card(folder, source)
    if not folder.exists():
        raise ModelNotFound(f"no model folder at {folder}")
    raise ModelNotFound(f"{folder} is not a model folder (no {CARD_NAME} and no StarDist config.json)")


def _stardist_card(folder: Path, source: str) -> ModelCard:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"cannot read the StarDist config {folder / 'config.json'}: {exc}") from exc
    if not isinstance(cfg, dict) or "n_dim" not in cfg:
        raise CorruptModel(f"{folder / 'config.json'} is not a StarDist config (no n_dim)")
    n_dim = int(cfg["n_dim"])
    n_ch = int(cfg.get("n_channel_in", 1))
    axes = ("ZYX" if n_dim == 3 else "YX") + ("C" if n_ch > 1 else "")
    return ModelCard(name=folder.name, task="segment", backend=f"stardist{n_dim}d", classes=["nucleus"],
                     axes=axes, channels=n_ch, description="StarDist model folder", source=source,
                     path=str(folder))


# --- pretrained models that live on the internet -------------------------------------
PRETRAINED: list[ModelCard] = [
    ModelCard("2D_versatile_fluo", "segment", "stardist2d", ["nucleus"], "YX", 1,
              description="StarDist's versatile fluorescent nuclei model (downloaded by stardist)"),
    ModelCard("2D_versatile_he", "segment", "stardist2d", ["nucleus"], "YXC", 3,
              description="StarDist's versatile H&E nuclei model (downloaded by stardist)"),
    ModelCard("2D_paper_dsb2018", "segment", "stardist2d", ["nucleus"], "YX", 1,
              description="StarDist paper's DSB2018 model (downloaded by stardist)"),
    ModelCard("3D_demo", "segment", "stardist3d", ["nucleus"], "ZYX", 1,
              description="StarDist's 3D demo model (downloaded by stardist)"),
    ModelCard("fasterrcnn_resnet50_fpn_coco", "detect", "fasterrcnn", [], "YXC", 3,
              normalization={"type": "scale", "factor": 1 / 255},
              description="torchvision Faster R-CNN with COCO weights (downloaded by torchvision)"),
]


def user_data_dir() -> Path:
    env = os.environ.get("NAPARI_CNNVISION_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-cnnvision", appauthor=False))


def shipped_models_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "models"


def stardist_cache_dir(name: str, n_dim: int) -> Path:
    """Where ``stardist``'s ``from_pretrained`` puts a model's folder (keras' cache folder)."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return keras_home / "models" / f"StarDist{n_dim}D" / name / name


def torch_hub_dir() -> Path:
    env = os.environ.get("TORCH_HOME")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return base / "hub" / "checkpoints"


class ModelRegistry:
    """Finds models from the three sources. Cheap: reads only JSON files."""

    def __init__(self, user_dir: str | Path | None = None, shipped_dir: str | Path | None = None):
        self.user_dir = Path(user_dir) if user_dir is not None else user_data_dir() / "models"
        self.shipped_dir = Path(shipped_dir) if shipped_dir is not None else shipped_models_dir()

    def _folder_cards(self, root: Path, source: str) -> list[ModelCard]:
        """One card per model folder. Dot-folders are never models: they are the temp folders and
        old copies of a folder replace (``.name.*.tmp``, ``.name.old-*``); an old copy stands in
        for ``name`` only while ``name`` itself is missing (a replace killed between its renames)."""
        from .io import swapped_out_name

        cards = []
        if not root.is_dir():
            return cards
        names = set()
        for p in root.iterdir():
            if not p.is_dir():
                continue
            name = p.name if not p.name.startswith(".") else swapped_out_name(p)
            if name and not name.startswith("."):
                names.add(name)
        for name in sorted(names):
            try:
                cards.append(read_card(root / name, source))
            except (ModelNotFound, CorruptModel):
                continue  # listed by `doctor`-style checks, not here
        return cards

    def _pretrained_cards(self) -> list[ModelCard]:
        out = []
        for card in PRETRAINED:
            c = ModelCard(**{**asdict(card), "source": "pretrained"})
            if c.backend.startswith("stardist"):
                cached = stardist_cache_dir(c.name, 3 if c.backend == "stardist3d" else 2)
                c.path = str(cached) if cached.is_dir() else None
            elif c.backend == "fasterrcnn":
                hits = sorted(torch_hub_dir().glob("fasterrcnn_resnet50_fpn_coco-*.pth"))
                c.path = str(hits[0]) if hits else None
            out.append(c)
        return out

    def list(self, task: str | None = None) -> list[ModelCard]:
        cards = (self._folder_cards(self.shipped_dir, "shipped") + self._pretrained_cards()
                 + self._folder_cards(self.user_dir, "user"))
        return [c for c in cards if task is None or c.task == task]

    def get(self, name_or_path: str | os.PathLike) -> ModelCard:
        """A model by registry name, or by folder path."""
        s = str(name_or_path)
        for c in self.list():
            if c.name == s:
                return c
        p = Path(s).expanduser()
        if os.sep in s or p.exists():
            return read_card(p, "path")
        names = ", ".join(c.name for c in self.list()) or "none"
        raise ModelNotFound(f"no model named {s!r} (known: {names}); pass a model folder path to use one directly")

    def default(self, task: str) -> ModelCard:
        """The task's default model: the shipped one whose card says ``"default": true``, else the
        first shipped one, else the first available one."""
        cards = [c for c in self.list(task) if c.source == "shipped"]
        if not cards:
            cards = self.list(task)
        if not cards:
            raise ModelNotFound(f"no {task} model is available")
        marked = [c for c in cards if c.extra.get("default") is True]
        return (marked or cards)[0]
