"""Checkpoints of the trainings, so that an interrupted run can be resumed.

A run named ``name`` keeps its checkpoint in its run folder (:mod:`.runs`: ``<user_dir>/.training/<name>/``,
a dot folder: the model registry never lists it): ``checkpoint.pt`` (model, optimizer and scheduler state,
the epoch, the history, the best metric and weights, random states, the request as JSON) and
``run.json`` (the request, the epoch saved, the process writing it). Both are written atomically
(temp file + rename, :mod:`..core.io`), so a kill or a full disk during a save leaves the previous
complete checkpoint. When the run ends normally or by Stop, the trainer registers the model and
removes the folder; a killed worker leaves it, and :func:`interrupted_runs` lists it.

A checkpoint is read with ``torch.load(weights_only=True)``: a file that holds other Python objects is
refused, never run. Resuming compares the request of the new call with the stored one
(:func:`check_resumable`): another kind of model, class set, architecture, base model, settings or
training data is refused with an :class:`~..core.axes.InputError` naming what differs.

The Keras trainer (StarDist) keeps ``checkpoint.h5`` instead (:mod:`.keras_checkpoint`: Keras
weights, the state as JSON), through the same :class:`RunCheckpoints` logic. No torch import at
module level.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from ..core.axes import InputError
from ..core.io import atomic_write_text, atomic_write_with
from ..core.progress import NULL_PROGRESS, Progress
# the run folders (:mod:`.runs`), also importable from here
from .runs import (CHECKPOINT_NAME, CHECKPOINT_NAMES, INFO_NAME, KERAS_CHECKPOINT_NAME, TRAINING_DIR,  # noqa: F401
                   _alive, _info, discard_run, guarded_run, interrupted_runs, release_run, remove_run, run_dir,
                   run_info)

FORMAT = "napari-cnnvision training checkpoint"
VERSION = 1
#: settings that may differ between a run and its resumption: where it runs and is saved, and how
#: long it goes on (a resumption may train for more or fewer epochs than planned first)
RESUME_FREE_SETTINGS = ("resume", "checkpoint", "device", "epochs", "time_budget")


def resume_settings(user_dir: str | Path, name: str, settings: dict | None, resume: bool) -> dict | None:
    """The settings a job trains with: ``settings``, or on a resumption without any, those of the
    interrupted run (None when there is no such run: resuming then says so)."""
    if not resume or settings is not None:
        return settings
    info = run_info(user_dir, name)
    got = (info or {}).get("request", {}).get("settings")
    if info is None:  # no run.json: the checkpoint holds the request too
        folder = run_dir(user_dir, name)
        try:
            if (folder / KERAS_CHECKPOINT_NAME).is_file():
                from .keras_checkpoint import load_keras_state

                got = load_keras_state(folder / KERAS_CHECKPOINT_NAME)["request"].get("settings")
            else:
                got = load_checkpoint(folder / CHECKPOINT_NAME)["request"].get("settings")
        except InputError:
            return None  # resuming says what is wrong with the run
    return dict(got) if isinstance(got, dict) else None


# --- the request and its comparison -----------------------------------------------------------
def fingerprint(*items) -> str:
    """A short hash of arrays (nested in lists, tuples and dicts) and plain values: the training
    data a run was given, to tell when a resumption gets other data."""
    h = hashlib.sha1()

    def feed(x):
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(f"[{len(x)}".encode())
            for v in x:
                feed(v)
            h.update(b"]")
        elif isinstance(x, np.ndarray) or hasattr(x, "__array__"):
            a = np.ascontiguousarray(np.asarray(x))
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
        else:
            h.update(repr(x).encode())

    for item in items:
        feed(item)
    return h.hexdigest()[:20]


def _plain(x):
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def _short(v, limit: int = 80) -> str:
    t = json.dumps(v, default=str)
    return t if len(t) <= limit else t[:limit] + "..."


#: what is compared, in this order, and how a difference is named
_CHECKS = (("kind", "another kind of model"), ("classes", "another class set"),
           ("architecture", "another architecture"), ("channels", "images with another number of channels"),
           ("base", "another base model"), ("settings", "other settings"), ("data", "other training data"))


def check_resumable(stored: dict, now: dict, name: str) -> None:
    """InputError when ``now`` (the new call's request) cannot continue the run of ``stored``."""
    stored, now = _plain(stored), _plain(now)
    for key, what in _CHECKS:
        a, b = stored.get(key), now.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            keys = sorted((set(a) | set(b)) - set(RESUME_FREE_SETTINGS))
            diff = [k for k in keys if a.get(k) != b.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {_short(a.get(k), 40)} then, {_short(b.get(k), 40)} now" for k in diff[:4])
                raise InputError(f"cannot resume the training run {name!r} with {what} ({shown}"
                                 f"{'; ...' if len(diff) > 4 else ''}); resume with the settings of the "
                                 "interrupted run (or none), or start a new run")
            continue
        if a != b:
            detail = "" if key == "data" else f": {_short(a)} then, {_short(b)} now"
            hint = ("resume with the same images and annotations" if key == "data"
                    else "resume with what the interrupted run used")
            raise InputError(f"cannot resume the training run {name!r} with {what}{detail}; {hint}, "
                             "or start a new run (that replaces the interrupted one)")


# --- reading and writing ----------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict, request: dict) -> Path:
    """Write ``state`` (tensors, numbers, text, lists and dicts of them) and the ``request`` as one
    file, atomically: an error (a full disk) leaves the previous file as it was."""
    import torch

    full = {**state, "format": FORMAT, "version": VERSION, "request": json.dumps(_plain(request), sort_keys=True)}
    return atomic_write_with(Path(path), lambda tmp: torch.save(full, tmp))


def load_checkpoint(path: str | Path, what: str | None = None) -> dict:
    """The state saved by :func:`save_checkpoint` (``request`` as a dict), read weights-only;
    InputError for a missing, damaged or untrusted file (one that pickles other objects)."""
    import torch

    from .torch_weights import load_error_reason

    path = Path(path)
    what = what or f"the checkpoint {path}"
    if not path.is_file():
        raise InputError(f"{what} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is reported the same way
        raise InputError(f"{what} cannot be read: {load_error_reason(exc)}; it is not used (start a new run)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{what} is not a training checkpoint of napari-cnnvision; it is not used (start a new run)")
    try:
        state["request"] = json.loads(state.get("request") or "{}")
    except ValueError:
        raise InputError(f"{what} is damaged (its request is not JSON); start a new run") from None
    return state


def rng_state(rng: np.random.Generator) -> dict:
    """A numpy generator's state as plain values (for a checkpoint)."""
    return _plain(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: dict | None) -> None:
    if state:
        rng.bit_generator.state = state


def training_state(epoch: int, model, optimizer, scheduler=None, rng: np.random.Generator | None = None,
                   **extra) -> dict:
    """What a trainer saves after an epoch: the model, optimizer and scheduler states, the numpy
    generator's and torch's random states, and ``extra`` (history, best metric and weights...)."""
    import torch

    return {"epoch": int(epoch), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(rng) if rng is not None else None, "torch_rng": torch.get_rng_state(), **extra}


def restore_state(state: dict, model, optimizer, scheduler=None, rng: np.random.Generator | None = None) -> int:
    """Put a :func:`training_state` back; returns its epoch."""
    import torch

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if rng is not None:
        set_rng_state(rng, state.get("rng"))
    if state.get("torch_rng") is not None:
        torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"])


def disk_message(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return f"{exc.strerror or exc}"


class RunCheckpoints:
    """The checkpoints of one training run (see the module notes).

    ``begin(resume)`` returns the saved state to continue from (after checking the request), or
    None for a fresh run (an earlier run of that name is replaced by its first checkpoint);
    ``save(state)`` writes one after an epoch and, when the disk is full (any OSError), keeps the
    previous checkpoint, reports it through ``progress`` and returns False. The training goes on:
    the model in memory is fine, a lost checkpoint only matters if the run is interrupted too, and
    the disk may have room again for the next epoch or the final save (a run stopped for a full
    disk would lose the epochs since the last checkpoint for nothing). ``finish()`` removes the
    folder once the model is registered. A subclass changes the file's format through
    :attr:`checkpoint_name`, :meth:`_write` and :meth:`_read` (:mod:`.keras_checkpoint`).
    """

    checkpoint_name = CHECKPOINT_NAME

    def __init__(self, folder: str | Path, name: str, request: dict, progress: Progress = NULL_PROGRESS,
                 file: str | Path | None = None):
        self.folder = Path(folder)
        self.name = name
        self.request = _plain(request)
        self.progress = progress
        self.file = Path(file) if file is not None else self.folder / self.checkpoint_name
        self.info_path = self.folder / INFO_NAME if file is None else self.file.with_name(self.file.name + ".json")
        self.warnings: list[str] = []
        self.saved_epoch: int | None = None
        self.resumed_from: int | None = None

    def begin(self, resume: bool) -> dict | None:
        if not resume:
            if self.file.exists() or self.info_path.exists():
                info = self._read_info()
                if _alive(info) and info.get("pid") != os.getpid():
                    raise InputError(f"the training run {self.name!r} is running now (process {info.get('pid')}); "
                                     "wait for it, stop it, or choose another name")
                # kept until this run's first checkpoint replaces it (a failure before loses nothing)
                self.progress(None, f"starting anew: the interrupted run {self.name!r} is replaced "
                                    "after the first epoch")
            return None
        info = self._read_info()
        if not self.file.is_file() and self.info_path.parent != self.folder:
            raise InputError(f"there is no checkpoint {self.file} to resume from; start a new run instead")
        if not self.file.is_file():
            parent = self.folder.parent.parent
            others = interrupted_runs(parent)
            listed = f"interrupted runs there: {', '.join(others)}" if others else "there are none"
            raise InputError(f"there is no interrupted training run named {self.name!r} to resume in {parent} "
                             f"({listed}); start a new run instead")
        if _alive(info) and info.get("pid") != os.getpid():
            raise InputError(f"the training run {self.name!r} is running now (process {info.get('pid')}); "
                             "it cannot be resumed twice")
        state = self._read(f"the checkpoint of the interrupted run {self.name!r} ({self.file})")
        check_resumable(state["request"], self.request, self.name)
        self.resumed_from = self.saved_epoch = int(state.get("epoch", 0))
        self.progress(None, f"resuming {self.name!r} after epoch {self.resumed_from}")
        return state

    def save(self, state: dict) -> bool:
        epoch = int(state.get("epoch", 0))
        try:
            self._write(state)
        except OSError as exc:
            kept = (f"the checkpoint of epoch {self.saved_epoch} is kept" if self.saved_epoch
                    else "there is no earlier checkpoint of this run")
            msg = (f"could not save the checkpoint of epoch {epoch} ({disk_message(exc)}): {kept}; "
                   "training goes on (free disk space, or the model cannot be saved at the end)")
            self.warnings.append(msg)
            self.progress(None, msg, checkpoint_error=msg)
            return False
        self.saved_epoch = epoch
        if self.file.parent == self.folder:  # a run of that name in another format is replaced now
            for other in CHECKPOINT_NAMES:
                if other != self.file.name:
                    (self.folder / other).unlink(missing_ok=True)
        info = {"name": self.name, "kind": self.request.get("kind"), "epoch": epoch,
                "epochs": self.request.get("epochs"), "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "pid": os.getpid(), "host": socket.gethostname(), "active": True, "request": self.request}
        try:
            atomic_write_text(self.info_path, json.dumps(info, indent=1) + "\n")
        except OSError:
            pass  # run.json only describes the run; the checkpoint holds the request too
        return True

    def _write(self, state: dict) -> None:
        save_checkpoint(self.file, state, self.request)

    def _read(self, what: str) -> dict:
        return load_checkpoint(self.file, what)

    def release(self) -> None:
        """Mark the run as not training now (an error ended it; the checkpoint stays to resume)."""
        info = self._read_info()
        if info and info.get("active"):
            try:
                atomic_write_text(self.info_path, json.dumps({**info, "active": False}, indent=1) + "\n")
            except OSError:
                pass

    def finish(self) -> None:
        """The model is registered: remove the run's checkpoint (and its folder, if it is ours)."""
        if self.info_path.parent == self.folder and self.file.parent == self.folder:
            remove_run(self.folder)
        else:
            self.file.unlink(missing_ok=True)
            self.info_path.unlink(missing_ok=True)

    def _read_info(self) -> dict | None:
        try:
            d = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def record(self) -> dict:
        """What a model card notes about the run's checkpoints."""
        out = {}
        if self.resumed_from is not None:
            out["resumed_after_epoch"] = self.resumed_from
        if self.warnings:
            out["checkpoint_warnings"] = self.warnings[-3:]
        return out
