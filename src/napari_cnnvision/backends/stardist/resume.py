"""Resuming a StarDist training: what :func:`.train.train_stardist2d` saves after every epoch into
the run folder (:mod:`..keras_checkpoint`, ``<user_dir>/.training/<name>/checkpoint.h5``) and puts
back when the run is resumed.

Saved: the network's weights; the optimizer's variables (Adam's moments, its step count and the
learning rate, as ReduceLROnPlateau lowered it); ReduceLROnPlateau's best val loss, plateau and
cooldown counters; the best val loss of StarDist's ``weights_best.h5`` checkpoint; the history;
the val AP@0.5 scores so far; the seconds trained; numpy's global random state. Kept beside it:
:data:`KEPT` (the weights of the lowest val loss, of the best val AP, the ``save_every`` copies).

A resumption seeds numpy as a fresh run does, so that StarDist draws the same validation patches
(the val loss stays comparable across the interruption), then continues the saved random stream
from the first training patch's augmentation on (:class:`ContinueRandom`), so that training
patches are not drawn again in the order of the first epochs.

TensorFlow / Keras only through the model objects passed in (the compute worker's).
"""
from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np

#: the trainer's files that a resumption needs (mirrored into the run folder)
KEPT = ("weights_best.h5", "weights_ap.h5", "weights_e[0-9]*.h5")


def run_request(arch: dict, n_channel: int, settings, base, init_weights, data_hash: str) -> dict:
    """What a resumption must share with the interrupted run (:func:`..checkpoint.check_resumable`)."""
    if base is not None:
        base_id = {"name": base.name, "folder": str(Path(base.folder).resolve())}
    elif init_weights is not None:
        base_id = {"weights": str(Path(init_weights).resolve())}
    else:
        base_id = None
    return {"kind": "stardist2d", "architecture": dict(arch), "channels": int(n_channel), "base": base_id,
            "epochs": settings.epochs, "settings": settings.to_dict(), "data": data_hash}


def _callbacks(model):
    """StarDist's ReduceLROnPlateau and best-weights ModelCheckpoint (None when absent)."""
    from csbdeep.utils.tf import keras_import

    plateau_cls = keras_import("callbacks", "ReduceLROnPlateau")
    checkpoint_cls = keras_import("callbacks", "ModelCheckpoint")
    plateau = next((cb for cb in model.callbacks if isinstance(cb, plateau_cls)), None)
    best = next((cb for cb in model.callbacks if isinstance(cb, checkpoint_cls) and cb.save_best_only), None)
    return plateau, best


def _num(v):
    return None if v is None else float(v)


def np_random_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)]


def set_np_random_state(state) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))


def _variables(optimizer) -> list:
    v = optimizer.variables
    return list(v() if callable(v) else v)


def epoch_state(model, epoch: int, run: dict, seconds: float) -> dict:
    """The checkpoint after ``epoch`` (1-based): ``run`` holds ``history``, ``val_ap50``, ``best_ap``."""
    plateau, best = _callbacks(model)
    opt = model.keras_model.optimizer
    return {"epoch": int(epoch), "history": run["history"], "val_ap50": run["val_ap50"],
            "best_ap": float(run["best_ap"]), "seconds": float(seconds),
            "learning_rate": float(np.asarray(opt.learning_rate)),
            "reduce_lr": None if plateau is None else {"best": _num(plateau.best), "wait": int(plateau.wait),
                                                       "cooldown_counter": int(plateau.cooldown_counter)},
            "best_val_loss": None if best is None else _num(best.best),
            "np_random": np_random_state(), "arrays": [np.asarray(v) for v in _variables(opt)]}


def restore(ckpts, state: dict, model, progress) -> None:
    """Put a checkpoint back into a StarDist model prepared for training (its weights, optimizer
    and best-weights checkpoint; ReduceLROnPlateau at the start of training: :func:`restore_plateau`)."""
    keras_model = model.keras_model
    ckpts.load_weights(keras_model)
    opt = keras_model.optimizer
    arrays = ckpts.load_arrays()
    try:
        opt.build(keras_model.trainable_variables)
        own = _variables(opt)
        if len(own) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(own, arrays)):
            raise ValueError(f"{len(arrays)} saved arrays for {len(own)} variables")
        for v, a in zip(own, arrays):
            v.assign(a)
    except Exception as exc:  # noqa: BLE001 - another Keras version: Adam starts anew, at the saved rate
        progress(None, f"the optimizer's state is not restored ({exc}); it restarts at the saved learning rate")
        opt.learning_rate = float(state["learning_rate"])
    _, best = _callbacks(model)
    if best is not None and state.get("best_val_loss") is not None:
        best.best = float(state["best_val_loss"])


def restore_plateau(model, saved: dict | None) -> None:
    """ReduceLROnPlateau resets itself when training begins: call this after it (on_train_begin)."""
    plateau, _ = _callbacks(model)
    if plateau is not None and saved:
        plateau.best = saved.get("best")
        plateau.wait = int(saved.get("wait", 0))
        plateau.cooldown_counter = int(saved.get("cooldown_counter", 0))


def remove_stale_stages(folder: Path, name: str) -> list[str]:
    """Remove the staging folders (``.<name>.<8 characters>.tmp``, :func:`...core.io.staged_dir`) that
    killed runs of ``name`` left beside ``folder`` (the resumed run's own); their names."""
    gone = []
    for p in Path(folder).parent.glob(f".{glob.escape(name)}.{'?' * 8}.tmp"):
        if p != Path(folder) and p.is_dir() and (p / "config.json").is_file():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


class ContinueRandom:
    """StarDist's augmenter ``fn(x, y)`` that first sets numpy's global random ``state``."""

    def __init__(self, fn, state):
        self.fn, self.state = fn, state

    def __call__(self, x, y):
        if self.state is not None:
            set_np_random_state(self.state)
            self.state = None
        return self.fn(x, y)
