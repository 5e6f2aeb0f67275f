"""Writes are atomic: a failure (e.g. a full disk) leaves the old file and no temp file behind; a replaced
folder is the old or the new complete one at every instant, also when the process is killed half-way."""
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_cnnvision.core import io


def test_atomic_write_keeps_old_file_when_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "result.csv"
    target.write_text("old content")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.atomic_write_text(target, "new content")
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def test_write_tiff_failure_leaves_nothing(tmp_path, monkeypatch):
    import tifffile

    target = tmp_path / "labels.tif"

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError):
        io.write_tiff(target, np.zeros((4, 4), np.uint16))
    assert list(tmp_path.iterdir()) == []


def test_write_tiff_roundtrip(tmp_path):
    import tifffile

    a = np.arange(20, dtype=np.uint16).reshape(4, 5)
    io.write_tiff(tmp_path / "x.tif", a)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "x.tif"), a)


def test_worker_reports_shared_memory_exhaustion(pool, monkeypatch):
    from multiprocessing import shared_memory

    from napari_cnnvision.worker import ComputeError

    def no_shm(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shared_memory, "SharedMemory", no_shm)
    with pytest.raises(ComputeError, match="not enough shared memory"):
        pool.run("echo", {"image": np.zeros((512, 512), np.float32)})


def test_atomic_writes_get_normal_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    io.atomic_write_text(tmp_path / "a.csv", "x")
    io.write_tiff(tmp_path / "b.tif", np.zeros((2, 2), np.uint8))
    for name in ("a.csv", "b.tif"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


# --- replacing a folder: at every instant the old or the new complete folder is there ---------------


class Killed(BaseException):
    """The process dies: nothing after this takes effect (no cleanup handler runs either)."""


def _make(folder, version, n_files=3):
    folder.mkdir(parents=True)
    for i in range(n_files):
        (folder / f"part{i}.txt").write_text(version)


def _version(folder):
    """The version of a complete folder; fails on a mixed or incomplete one."""
    texts = {(folder / f"part{i}.txt").read_text() for i in range(3)}
    assert len(texts) == 1, f"mixed folder {folder}: {texts}"
    return texts.pop()


def _kill_after(monkeypatch, k):
    """Let the first k file-system changes of the swap happen, then die."""
    calls = []

    def wrap(fn):
        def inner(*a, **kw):
            calls.append(fn)
            if len(calls) > k:
                raise Killed()
            return fn(*a, **kw)
        return inner

    monkeypatch.setattr(os, "rename", wrap(os.rename))
    monkeypatch.setattr(os, "replace", wrap(os.replace))
    monkeypatch.setattr(shutil, "rmtree", wrap(shutil.rmtree))
    monkeypatch.setattr(io, "_exchange", wrap(io._exchange))
    return calls


@pytest.fixture(params=["exchange", "two-renames"])
def swap_mode(request, monkeypatch):
    if request.param == "two-renames":  # a platform or file system without an atomic exchange
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    elif not io._exchange_supported():
        pytest.skip("no atomic directory exchange here")
    return request.param


def test_replace_dir_replaces_and_leaves_nothing(tmp_path, swap_mode):
    dest = tmp_path / "model"
    _make(dest, "v1")
    _make(tmp_path / ".model.abc.tmp", "v2")
    io.replace_dir(tmp_path / ".model.abc.tmp", dest)
    assert _version(dest) == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    _make(tmp_path / ".other.tmp", "v1")  # also when nothing was there
    io.replace_dir(tmp_path / ".other.tmp", tmp_path / "other")
    assert _version(tmp_path / "other") == "v1"


@pytest.mark.parametrize("k", range(6))
def test_replace_dir_killed_at_each_step(tmp_path, monkeypatch, swap_mode, k):
    dest = tmp_path / "model"
    _make(dest, "v1")
    new = tmp_path / ".model.abc.tmp"
    _make(new, "v2")
    calls = _kill_after(monkeypatch, k)
    try:
        io.replace_dir(new, dest)
        killed = False
    except Killed:
        killed = True
    monkeypatch.undo()
    if not killed:
        assert len(calls) <= k
        return
    # right after the kill: a complete old or new model is found under its name; nothing else is
    # visible (every leftover is a dot-folder)
    live = io.current_dir(dest)
    assert live is not None and _version(live) in ("v1", "v2")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] in (["model"], [])
    # the next replace recovers: the newest content, no leftover but the (young) temp folder
    _make(tmp_path / ".model.def.tmp", "v3")
    io.replace_dir(tmp_path / ".model.def.tmp", dest)
    assert _version(dest) == "v3"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left in (["model"], [".model.abc.tmp", "model"]), left
    # an old temp folder (a save killed long ago) is cleaned by the next replace
    if ".model.abc.tmp" in left:
        os.utime(tmp_path / ".model.abc.tmp", (1, 1))
    _make(tmp_path / ".model.ghi.tmp", "v4")
    io.replace_dir(tmp_path / ".model.ghi.tmp", dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and _version(dest) == "v4"


def test_replace_dir_failure_keeps_the_old_folder(tmp_path, monkeypatch, swap_mode):
    dest = tmp_path / "model"
    _make(dest, "v1")
    _make(tmp_path / ".model.abc.tmp", "v2")
    real = os.rename

    def second_rename_fails(a, b):
        if Path(a).name == ".model.abc.tmp":
            raise OSError(errno.EACCES, "Permission denied")
        return real(a, b)

    def exchange_fails(a, b):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "rename", second_rename_fails)
    if swap_mode == "exchange":
        monkeypatch.setattr(io, "_exchange", exchange_fails)
    with pytest.raises(OSError):
        io.replace_dir(tmp_path / ".model.abc.tmp", dest)
    assert _version(dest) == "v1"
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


def test_staged_dir_writes_readable_folder_or_nothing(tmp_path):
    dest = tmp_path / "pkg"
    with io.staged_dir(dest) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (dest / "a.txt").read_text() == "x"
    assert dest.stat().st_mode & 0o777 == 0o777 & ~io._umask()
    with pytest.raises(RuntimeError):
        with io.staged_dir(dest) as tmp:
            (tmp / "a.txt").write_text("y")
            raise RuntimeError("failed half-way")
    assert (dest / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


# --- the U-Net model folder: a save killed at any step keeps a loadable model ------------------------
@pytest.mark.parametrize("k", range(7))
def test_unet_save_killed_at_each_step_keeps_a_loadable_model(tmp_path, monkeypatch, k):
    pytest.importorskip("torch")
    from napari_cnnvision.backends.unet.io import load_model, save_model
    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet
    from napari_cnnvision.core.registry import ModelRegistry

    user = tmp_path / "models"
    folder = user / "mine"
    small, big = UNetConfig(depth=2, base_filters=4), UNetConfig(depth=2, base_filters=8)
    save_model(folder, build_unet(small), small, thresholds={"seed": 0.3})
    calls = _kill_after(monkeypatch, k)
    try:
        save_model(folder, build_unet(big), big, thresholds={"seed": 0.7})
        killed = False
    except Killed:
        killed = True
    monkeypatch.undo()
    reg = ModelRegistry(user_dir=user, shipped_dir=tmp_path / "none")
    users = [c for c in reg.list() if c.source == "user"]
    assert [c.name for c in users] == ["mine"]
    m = load_model(reg.get("mine").path, use_cache=False)  # old or new, complete: config fits weights
    assert (m.config.base_filters, m.thresholds["seed"]) in ((4, 0.3), (8, 0.7))
    if not killed:
        assert len(calls) <= k and m.config.base_filters == 8
        return
    save_model(folder, build_unet(small), small, thresholds={"seed": 0.5})
    m = load_model(folder, use_cache=False)
    assert (m.config.base_filters, m.thresholds["seed"]) == (4, 0.5)
    assert not [p for p in user.iterdir() if ".old-" in p.name]
