"""Writes are atomic: a failure (e.g. a full disk) leaves the old file and no temp file behind."""
import errno
import os

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
