"""The folders of training runs: where a run keeps its checkpoint, whether it is training now, and
listing, releasing and removing them.

A run named ``name`` lives in :func:`run_dir` ``= <user_dir>/.training/<name>/`` (a dot folder: the
model registry never lists it), with its checkpoint (:mod:`.checkpoint`) and ``run.json`` (the
request, the epoch saved, the process writing it: host and pid, and ``active`` while it trains).
When the run ends normally or by Stop the trainer removes the folder; a killed worker leaves it,
and :func:`interrupted_runs` lists it. numpy-free, no torch.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
from pathlib import Path

from ..core.axes import InputError
from ..core.io import atomic_write_text

TRAINING_DIR = ".training"
CHECKPOINT_NAME = "checkpoint.pt"
KERAS_CHECKPOINT_NAME = "checkpoint.h5"
#: the checkpoint file of a run: one of these (PyTorch, Keras)
CHECKPOINT_NAMES = (CHECKPOINT_NAME, KERAS_CHECKPOINT_NAME)
INFO_NAME = "run.json"


def run_dir(user_dir: str | Path, name: str) -> Path:
    """The folder of the training run ``name``: ``<user_dir>/.training/<name>/``."""
    return Path(user_dir) / TRAINING_DIR / str(name)


def _info(folder: Path) -> dict | None:
    try:
        d = json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _alive(info: dict | None) -> bool:
    """True while the process that writes the run is training it (on this machine)."""
    if not info or not info.get("active") or info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def interrupted_runs(user_dir: str | Path) -> list[str]:
    """Names of the runs in ``user_dir`` that left a checkpoint and are not training now (a
    killed worker, a crash, an error), sorted."""
    root = Path(user_dir) / TRAINING_DIR
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(p.name for p in folders
                  if any((p / n).is_file() for n in CHECKPOINT_NAMES) and not _alive(_info(p)))


def run_info(user_dir: str | Path, name: str) -> dict | None:
    """``run.json`` of the run ``name`` (``kind``, ``epoch``, ``epochs``, ``saved``, ``request``...),
    or None when there is none."""
    return _info(run_dir(user_dir, name))


def discard_run(user_dir: str | Path, name: str) -> None:
    """Remove the interrupted run ``name`` (nothing when there is none): its run folder and the
    staging folders (``.<name>.<8 characters>.tmp``) its unfinished model save left in ``user_dir``.
    A run that is training now is refused (:class:`InputError`)."""
    folder = run_dir(user_dir, name)
    if _alive(_info(folder)):
        raise InputError(f"the run {name!r} is training now; stop it before discarding it")
    remove_run(folder)
    for p in Path(user_dir).glob(f".{glob.escape(name)}.{'?' * 8}.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def remove_run(folder: str | Path) -> None:
    """Remove a run folder, and ``.training`` when no run is left in it."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.name == TRAINING_DIR:
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # only when empty


def release_run(folder: str | Path) -> None:
    """Mark the run in ``folder`` as not training now (an error ended it; its checkpoint stays)."""
    folder = Path(folder)
    info = _info(folder)
    if info and info.get("active"):
        try:
            atomic_write_text(folder / INFO_NAME, json.dumps({**info, "active": False}, indent=1) + "\n")
        except OSError:
            pass


@contextlib.contextmanager
def guarded_run(user_dir: str | Path, name: str):
    """``with guarded_run(user_dir, name): train(...)``: an error (or Ctrl-C) leaves the run's
    checkpoint, marked as not training now, so that :func:`interrupted_runs` lists it at once."""
    try:
        yield
    except BaseException:
        release_run(run_dir(user_dir, name))
        raise
