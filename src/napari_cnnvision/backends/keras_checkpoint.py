"""Checkpoints of a Keras training (StarDist), in the run folders of :mod:`.checkpoint`.

``checkpoint.h5`` holds the network's weights as the model's ``save_weights`` writes them for a
``.h5`` name (HDF5; csbdeep's models), and a group of its own with the trainer's state as JSON
(epoch, history, best metrics, callback and random states, the request) and plain arrays (the
optimizer's variables). It is written atomically (temp file + rename): a full disk or a kill
during a save leaves the previous checkpoint. It is read with h5py and Keras' HDF5 weights
loader: arrays and text only, nothing is unpickled.

Files the trainer keeps between epochs in its own folder (the weights of the lowest val loss, of
the best val AP...) are mirrored into the run folder when they change, before the checkpoint that
counts them is written, and copied back when the run is resumed.

h5py here; Keras only through the model object the trainer passes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..core.axes import InputError
from ..core.io import atomic_write_with
from ..core.progress import NULL_PROGRESS, Progress
from .checkpoint import FORMAT, KERAS_CHECKPOINT_NAME, VERSION, RunCheckpoints, _plain

GROUP = "napari_cnnvision"  # beside the layers' groups; Keras' loader reads only the layers it lists


def save_keras_checkpoint(path: str | Path, keras_model, state: dict, request: dict, arrays=()) -> Path:
    """Write the weights of ``keras_model``, ``state`` (plain values), the ``request`` and
    ``arrays`` as one HDF5 file, atomically."""
    import h5py

    text = json.dumps({**_plain(state), "format": FORMAT, "version": VERSION, "request": _plain(request)})

    def write(tmp):
        keras_model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            g = f.create_group(GROUP)
            g.create_dataset("state", data=text)
            a = g.create_group("arrays")
            for i, arr in enumerate(arrays):
                a.create_dataset(f"{i:05d}", data=np.asarray(arr))

    return atomic_write_with(Path(path), write)


def _open(path: Path, what: str):
    import h5py

    if not path.is_file():
        raise InputError(f"{what} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{what} cannot be read ({exc}); it is not used (start a new run)") from None


def load_keras_state(path: str | Path, what: str | None = None) -> dict:
    """The state saved by :func:`save_keras_checkpoint` (``request`` as a dict; no arrays, no
    weights); InputError for a missing, damaged or foreign file."""
    path = Path(path)
    what = what or f"the checkpoint {path}"
    with _open(path, what) as f:
        try:
            state = json.loads(f[GROUP]["state"].asstr()[()])
        except (KeyError, TypeError, ValueError, OSError):
            raise InputError(f"{what} is not a training checkpoint of napari-cnnvision (or it is damaged); "
                             "it is not used (start a new run)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("request"), dict):
        raise InputError(f"{what} is not a training checkpoint of napari-cnnvision; it is not used (start a new run)")
    return state


def load_keras_arrays(path: str | Path, what: str | None = None) -> list[np.ndarray]:
    path = Path(path)
    what = what or f"the checkpoint {path}"
    with _open(path, what) as f:
        try:
            g = f[GROUP]["arrays"]
            return [np.asarray(g[k][()]) for k in sorted(g)]
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise InputError(f"{what} is damaged ({exc}); it is not used (start a new run)") from None


def load_keras_weights(path: str | Path, keras_model, what: str | None = None) -> None:
    """Put the checkpoint's weights into ``keras_model`` (Keras' HDF5 loader); InputError when
    the file cannot be read or does not fit the network."""
    path = Path(path)
    what = what or f"the checkpoint {path}"
    _open(path, what).close()
    try:
        keras_model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read it is reported the same way
        raise InputError(f"{what} cannot be read ({type(exc).__name__}: {exc}); it is not used (start a new run)"
                         ) from None


class KerasRunCheckpoints(RunCheckpoints):
    """:class:`~.checkpoint.RunCheckpoints` with ``checkpoint.h5``. Set :attr:`model` (the Keras
    model) before saving; ``save(state)`` takes the optimizer's arrays as ``state["arrays"]``.
    ``workdir`` / ``keep``: the trainer's folder and the glob patterns of its files to mirror."""

    checkpoint_name = KERAS_CHECKPOINT_NAME

    def __init__(self, folder, name, request, progress: Progress = NULL_PROGRESS, *,
                 workdir: str | Path | None = None, keep: tuple[str, ...] = ()):
        super().__init__(folder, name, request, progress)
        self.model = None
        self.workdir = Path(workdir) if workdir is not None else None
        self.keep = tuple(keep)
        self._mirrored: dict[str, tuple[int, int]] = {}

    def _kept(self, folder: Path) -> dict[str, Path]:
        return {p.name: p for pat in self.keep for p in folder.glob(pat) if p.is_file()}

    def _mirror(self) -> None:
        """The run folder's copies of the kept files, as they are in the trainer's folder."""
        if self.workdir is None:
            return
        src = self._kept(self.workdir)
        for name, p in src.items():
            st = p.stat()
            if self._mirrored.get(name) != (st.st_mtime_ns, st.st_size) or not (self.folder / name).is_file():
                atomic_write_with(self.folder / name, lambda tmp, p=p: shutil.copyfile(p, tmp))
                self._mirrored[name] = (st.st_mtime_ns, st.st_size)
        for name, p in self._kept(self.folder).items():  # an earlier run's, or one the trainer removed
            if name not in src:
                p.unlink(missing_ok=True)
                self._mirrored.pop(name, None)

    def restore_kept(self) -> list[str]:
        """Copy the kept files of the run back into the trainer's folder; their names."""
        out = []
        for name, p in sorted(self._kept(self.folder).items()):
            dst = self.workdir / name
            shutil.copyfile(p, dst)
            st = dst.stat()
            self._mirrored[name] = (st.st_mtime_ns, st.st_size)
            out.append(name)
        return out

    def _write(self, state: dict) -> None:
        if self.model is None:
            raise RuntimeError("KerasRunCheckpoints.model is not set")
        state = dict(state)
        arrays = state.pop("arrays", ())
        self.folder.mkdir(parents=True, exist_ok=True)
        self._mirror()
        save_keras_checkpoint(self.file, self.model, state, self.request, arrays)

    def _read(self, what: str) -> dict:
        return load_keras_state(self.file, what)

    def load_weights(self, keras_model) -> None:
        load_keras_weights(self.file, keras_model, f"the checkpoint of the interrupted run {self.name!r} ({self.file})")

    def load_arrays(self) -> list[np.ndarray]:
        return load_keras_arrays(self.file, f"the checkpoint of the interrupted run {self.name!r} ({self.file})")
