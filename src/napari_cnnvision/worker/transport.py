"""Pickling with large numpy arrays moved through shared memory.

The sender copies each large array once into a fresh shared-memory block and pickles
only a small reference to it; the receiver maps the block. Everything else (dicts,
dataclasses, small arrays) is pickled as usual.
"""
from __future__ import annotations

import io
import pickle
from multiprocessing import resource_tracker, shared_memory

import numpy as np

# Arrays at least this large go through shared memory.
SHM_THRESHOLD = 1 << 16


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open an existing block without registering it with the resource tracker.

    The creator of a block owns it (and its tracker entry); registering again on attach
    would make the tracker unlink it, or complain, when this process ends.
    """
    register = resource_tracker.register
    resource_tracker.register = lambda *a, **k: None
    try:
        return shared_memory.SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = register


class _Pickler(pickle.Pickler):
    def __init__(self, file, blocks):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blocks = blocks

    def persistent_id(self, obj):
        if type(obj) is np.ndarray and obj.nbytes >= SHM_THRESHOLD and not obj.dtype.hasobject:
            shm = shared_memory.SharedMemory(create=True, size=obj.nbytes)
            np.ndarray(obj.shape, obj.dtype, buffer=shm.buf)[...] = obj
            self.blocks.append(shm)
            return ("shm", shm.name, obj.shape, obj.dtype.str)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, copy: bool, opened, unlink: bool):
        super().__init__(file)
        self.copy = copy
        self.opened = opened
        self.unlink = unlink

    def persistent_load(self, pid):
        kind, name, shape, dtype = pid
        if kind != "shm":  # pragma: no cover - protocol error
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        shm = _attach(name)
        arr = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf)
        if self.copy:
            arr = arr.copy()
            shm.close()
            if self.unlink:
                shm.unlink()
        else:
            self.opened.append(shm)
        return arr


def dumps(obj) -> tuple[bytes, list[shared_memory.SharedMemory]]:
    """Pickle ``obj``; returns the bytes and the shared-memory blocks created (caller owns them)."""
    blocks: list[shared_memory.SharedMemory] = []
    buf = io.BytesIO()
    try:
        _Pickler(buf, blocks).dump(obj)
    except BaseException:
        release(blocks, unlink=True)
        raise
    return buf.getvalue(), blocks


def loads(data: bytes, copy: bool = True, unlink: bool = False):
    """Unpickle; with ``copy=False`` arrays stay views on shared memory.

    With ``copy=True`` and ``unlink=True`` each block is removed once copied (the
    receiver takes ownership of blocks the sender created).

    Returns ``(obj, opened_blocks)``; close the blocks (see :func:`release`) when done.
    """
    opened: list[shared_memory.SharedMemory] = []
    obj = _Unpickler(io.BytesIO(data), copy, opened, unlink and copy).load()
    return obj, opened


def unlink(names) -> None:
    """Remove the blocks called ``names`` (those already gone are skipped).

    Whoever ends up responsible for a result's blocks calls this by name: the client once it has
    copied a result or given up on it, the worker for results its client never took.
    """
    for name in names or ():
        try:
            shm = _attach(name)
        except FileNotFoundError:
            continue
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
        finally:
            shm.close()


def release(blocks, unlink: bool = False) -> list:
    """Close (and optionally unlink) blocks; returns those still in use by live arrays."""
    busy = []
    for shm in blocks:
        if unlink:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        try:
            shm.close()
        except BufferError:
            busy.append(shm)
    return busy
