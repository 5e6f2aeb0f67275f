"""Small file helpers: atomic writes (temp file + rename) so no half-written file is left, and
folders replaced so that the old or the new complete folder is always there."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what a plain open() would give (mkstemp makes files 0600)
_DIR_MODE = 0o777 & ~_umask()  # what a plain mkdir() would give (mkdtemp makes folders 0700)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, writer) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_tiff(path: str | Path, array) -> Path:
    import tifffile

    return atomic_write_with(path, lambda tmp: tifffile.imwrite(tmp, array, compression="zlib"))


# --- replacing a whole folder (a model folder) -----------------------------------------------------
#
# ``replace_dir(new, dest)`` puts the complete folder ``new`` at ``dest``. Where the OS can swap two
# folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``) there is no instant without a complete
# ``dest``. Elsewhere it takes two renames, ``dest -> .dest.old-<id>`` and ``new -> dest``; between them
# the complete old folder is ``.dest.old-<id>``, and readers use it (:func:`current_dir`) when ``dest``
# is missing, e.g. after a kill at that point; the next replace of ``dest`` renames it back first.
# Leftovers are dot-folders (``.dest.*.tmp``, ``.dest.old-*``), never listed as models.

_OLD_MARK = ".old-"
STALE_TMP_SECONDS = 3600  # a temp folder this old is a leftover of a killed save, not one in progress

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None  # cached libc function; False when there is none


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (OSError, AttributeError):  # no libc symbol (old glibc, musl without it)
                pass
    return _renameat2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths atomically; False where the OS or file system cannot."""
    fn = _libc_renameat2()
    if not fn:
        return False
    import ctypes

    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # e.g. a file system without RENAME_EXCHANGE: fall back to two renames
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _exchange_supported() -> bool:
    return bool(_libc_renameat2())


def _old_copies(dest: Path) -> list[Path]:
    """``.dest.old-*`` folders left by a replace, newest first."""
    prefix = f".{dest.name}{_OLD_MARK}"
    try:
        hits = [p for p in dest.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(hits, key=lambda p: p.name, reverse=True)


def swapped_out_name(path: Path) -> str | None:
    """``name`` for a ``.name.old-*`` folder (the old copy a folder replace set aside), else None."""
    n = path.name
    if not n.startswith(".") or _OLD_MARK not in n:
        return None
    return n[1:].rsplit(_OLD_MARK, 1)[0] or None


def current_dir(dest: str | Path) -> Path | None:
    """``dest`` if it exists; else the complete old copy that a replace interrupted between its two
    renames left (``.dest.old-*``); else None."""
    dest = Path(dest)
    for _ in range(3):  # a replace running now may move them between our looks
        if dest.exists():
            return dest
        for old in _old_copies(dest):
            if old.exists():
                return old
    return dest if dest.exists() else None


def recover_dir(dest: str | Path, stale_seconds: float = STALE_TMP_SECONDS, keep: str | Path | None = None) -> None:
    """Repair what an interrupted :func:`replace_dir` of ``dest`` left: a missing ``dest`` gets its
    old copy back; other old copies and stale temp folders (``.dest.*.tmp``) are deleted, except
    ``keep`` (the folder being moved in: a long job's own temp folder can look stale)."""
    dest = Path(dest)
    keep = None if keep is None else os.path.abspath(keep)
    olds = _old_copies(dest)
    if olds and not os.path.lexists(dest):
        os.rename(olds[0], dest)
        olds = olds[1:]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    now = time.time()
    prefix = f".{dest.name}."
    for p in dest.parent.iterdir():
        if p.name.startswith(prefix) and p.name.endswith(".tmp") and p.is_dir() and os.path.abspath(p) != keep:
            try:
                if now - p.stat().st_mtime > stale_seconds:
                    shutil.rmtree(p, ignore_errors=True)
            except FileNotFoundError:
                pass


def replace_dir(new: str | Path, dest: str | Path) -> Path:
    """Move the complete folder ``new`` (a sibling of ``dest``) to ``dest``, replacing what is there.

    Readers see the old or the new complete folder, never a mix (see the notes above). On an error
    the old folder stays in place.
    """
    new, dest = Path(new), Path(dest)
    recover_dir(dest, keep=new)
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return dest
    if _exchange(new, dest):  # one atomic step: dest is the new folder, ``new`` now holds the old one
        shutil.rmtree(new, ignore_errors=True)
        return dest
    old = dest.with_name(f".{dest.name}{_OLD_MARK}{time.time_ns():016x}{uuid.uuid4().hex[:6]}")
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


@contextlib.contextmanager
def staged_dir(dest: str | Path):
    """``with staged_dir(dest) as tmp:`` write the folder's files into ``tmp``; on success it
    replaces ``dest`` (:func:`replace_dir`), on an error it is deleted and ``dest`` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    os.chmod(tmp, _DIR_MODE)  # mkdtemp makes it private; a model folder is for all to read
    try:
        yield tmp
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
