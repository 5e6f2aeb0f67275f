"""Pickling with large numpy arrays moved through shared memory.

The sender copies each large array once into a fresh shared-memory block and pickles
only a small reference to it; the receiver maps the block. Everything else (dicts,
dataclasses, small arrays) is pickled as usual.
"""
from __future__ import annotations

import io
import os
import pickle
import secrets
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
    def __init__(self, file, blocks, prefix: str | None):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blocks = blocks
        self.prefix = prefix

    def persistent_id(self, obj):
        if type(obj) is np.ndarray and obj.nbytes >= SHM_THRESHOLD and not obj.dtype.hasobject:
            name = None if self.prefix is None else f"{self.prefix}{len(self.blocks)}"
            shm = shared_memory.SharedMemory(name=name, create=True, size=obj.nbytes)
            self.blocks.append(shm)  # before the copy: an interrupted copy leaves nothing behind
            np.ndarray(obj.shape, obj.dtype, buffer=shm.buf)[...] = obj
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


def new_prefix() -> str:
    """A fresh name prefix for the blocks of one message (see :func:`dumps`)."""
    return f"psm_{secrets.token_hex(6)}r"


def dumps(obj, prefix: str | None = None) -> tuple[bytes, list[shared_memory.SharedMemory]]:
    """Pickle ``obj``; returns the bytes and the shared-memory blocks created (caller owns them).

    With ``prefix`` the blocks are named ``prefix + "0"``, ``prefix + "1"``, ... in order, so
    that the receiver can remove them by name even when the sender died before it said which
    (see :func:`unlink_prefixed`).
    """
    blocks: list[shared_memory.SharedMemory] = []
    buf = io.BytesIO()
    try:
        _Pickler(buf, blocks, prefix).dump(obj)
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


def _unlink_name(name: str) -> bool:
    """Remove block ``name`` (also one its creator died in the middle of making); False if none.

    On Windows a block goes when its last handle closes: there is nothing to remove.
    """
    if os.name == "nt":  # pragma: no cover
        return False
    from _posixshmem import shm_unlink

    try:
        shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    resource_tracker.unregister("/" + name, "shared_memory")  # its creator registered it
    return True


def unlink(names) -> None:
    """Remove the blocks called ``names`` (those already gone are skipped).

    Whoever ends up responsible for a result's blocks calls this by name: the client once it has
    copied a result or given up on it, the worker for results its client never took.
    """
    for name in names or ():
        _unlink_name(name)


def unlink_prefixed(prefix: str) -> None:
    """Remove the blocks :func:`dumps` made with ``prefix`` (up to the first one missing)."""
    i = 0
    while _unlink_name(f"{prefix}{i}"):
        i += 1


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
