"""``napari-cnnvision segment BIG --out DIR`` goes block-wise by itself above a size threshold (lowered
here through NAPARI_CNNVISION_BLOCK_PIXELS instead of using a big image), and zarr inputs always do;
lazy TIFF windows; the tiled-TIFF labels of ``--format tif``."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

CLI = str(Path(sys.executable).parent / "napari-cnnvision")


def _nuclei(shape, seed, n):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(n):
        cy, cx, r = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8), rng.uniform(4, 7)
        img += 1000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img + rng.normal(0, 20, shape), 0, 65535).astype(np.uint16)


def test_large_tiff_and_zarr_inputs_switch_to_blocks_by_themselves(tmp_path):
    import zarr

    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "big.tif", _nuclei((160, 176), 1, 30), tile=(64, 64))  # 28160 px: above
    tifffile.imwrite(inp / "small.tif", _nuclei((96, 96), 2, 8))  # 9216 px: below, segmented whole
    z = zarr.open_array(str(inp / "lazy.zarr"), mode="w", shape=(120, 100), chunks=(64, 64), dtype=np.uint16,
                        zarr_format=2)
    z[:] = _nuclei((120, 100), 3, 20)  # a zarr array: always block-wise
    env = {**os.environ, "NAPARI_CNNVISION_BLOCK_PIXELS": "20000"}
    env.pop("QT_API", None)
    seg = lambda out, *extra: subprocess.run([CLI, "segment", str(inp), "--out", str(out), "--model", "nuclei-unet",
                                              "--tiles", "none", *extra], capture_output=True, text=True,
                                             timeout=300, env=env)
    r = seg(tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "segmented 3, skipped 0 (already done), failed 0" in r.stdout
    assert "big.tif: " in r.stderr and "-> " + str(tmp_path / "out" / "big.zarr") + " (block-wise" in r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["big.csv", "big.zarr", "lazy.csv", "lazy.zarr", "small.csv",
                                                     "small.tif"]
    for name, shape in (("big", (160, 176)), ("lazy", (120, 100))):
        root = zarr.open_group(str(out / f"{name}.zarr"), mode="r")
        assert root.attrs["multiscales"][0]["datasets"][0]["path"] == "0" and "image-label" in root.attrs
        assert root.attrs["multiscales"][0]["name"] == name  # not the staging folder's
        lab = np.asarray(root["0"])
        assert lab.shape == shape and lab.dtype == np.int32
        rows = (out / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "label,area,centroid_y,centroid_x,probability"
        assert len(rows) - 1 == len(np.unique(lab)) - 1 >= 5
    assert tifffile.imread(out / "small.tif").shape == (96, 96)

    # --format tif: the block-wise labels as a tiled TIFF, the same labels; a re-run skips all three
    r = seg(tmp_path / "tif", "--format", "tif")
    assert r.returncode == 0 and "segmented 3," in r.stdout, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "tif").iterdir()) == ["big.csv", "big.tif", "lazy.csv", "lazy.tif",
                                                                    "small.csv", "small.tif"]
    with tifffile.TiffFile(tmp_path / "tif" / "big.tif") as tf:
        assert tf.pages[0].is_tiled
        np.testing.assert_array_equal(tf.asarray(), np.asarray(zarr.open_group(str(out / "big.zarr"))["0"]))
    assert (tmp_path / "tif" / "big.csv").read_bytes() == (out / "big.csv").read_bytes()
    r = seg(tmp_path / "out")
    assert r.returncode == 0 and "segmented 0, skipped 3 (already done), failed 0" in r.stdout, r.stderr[-3000:]


def test_threshold_from_the_environment_and_bad_values(monkeypatch):
    from napari_cnnvision.scaleout import large

    monkeypatch.delenv(large.BLOCK_PIXELS_ENV, raising=False)
    assert large.block_threshold() == large.DEFAULT_BLOCK_PIXELS == 4096 * 4096
    monkeypatch.setenv(large.BLOCK_PIXELS_ENV, "1e6")
    assert large.block_threshold() == 1_000_000
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv(large.BLOCK_PIXELS_ENV, bad)
        with pytest.raises(ValueError, match=large.BLOCK_PIXELS_ENV):
            large.block_threshold()


def test_which_inputs_go_blockwise(tmp_path):
    import zarr

    from napari_cnnvision.scaleout.large import expand, goes_blockwise

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((50, 60), np.uint16))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((50, 60, 3), np.uint8))  # not 2-D: never block-wise
    (tmp_path / "broken.tif").write_bytes(b"no tiff")  # unreadable: the plain path reports it
    zarr.open_array(str(tmp_path / "z.zarr"), mode="w", shape=(8, 8), dtype=np.uint8, zarr_format=2)
    assert goes_blockwise(tmp_path / "a.tif", 2999) and not goes_blockwise(tmp_path / "a.tif", 3000)
    assert not goes_blockwise(tmp_path / "rgb.tif", 10) and not goes_blockwise(tmp_path / "broken.tif", 10)
    assert goes_blockwise(tmp_path / "z.zarr", 10 ** 12)
    assert [p.name for p in expand([tmp_path, tmp_path / "z.zarr"])] == ["a.tif", "broken.tif", "rgb.tif", "z.zarr"]


@pytest.mark.parametrize("kw", [{}, {"tile": (32, 32)}, {"compression": "zlib"}])
def test_tiff_windows_read_lazily_as_written(tmp_path, kw):
    from napari_cnnvision.scaleout.blockwise import _MappedTiff, open_source

    a = np.random.default_rng(0).integers(0, 60000, (100, 130)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", a, **kw)
    src = open_source(tmp_path / "x.tif")
    assert isinstance(src, _MappedTiff) == (not kw)  # contiguous: a memory map per read, not one 'chunk'
    assert tuple(src.shape) == a.shape
    np.testing.assert_array_equal(np.asarray(src[10:70, 33:129]), a[10:70, 33:129])
    np.testing.assert_array_equal(np.asarray(src[::7, ::5]), a[::7, ::5])


def test_zarr_labels_to_tiled_tiff_tile_by_tile(tmp_path):
    from napari_cnnvision.scaleout.blockwise import _write_ome_labels
    from napari_cnnvision.scaleout.large import zarr_to_tiff

    lab = np.random.default_rng(1).integers(0, 500, (70, 90)).astype(np.int32)
    arr = _write_ome_labels(tmp_path / "l.zarr", lab.shape, (32, 32), np.int32)
    arr[:] = lab
    zarr_to_tiff(tmp_path / "l.zarr", tmp_path / "l.tif", tile=32)
    with tifffile.TiffFile(tmp_path / "l.tif") as tf:
        assert tf.pages[0].is_tiled and tf.pages[0].tilewidth == 32
        np.testing.assert_array_equal(tf.asarray(), lab)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


@pytest.mark.parametrize("extra", [[], ["--blocks", "64"]])
def test_zarr_output_that_would_overwrite_the_zarr_input_is_refused(tmp_path, capsys, extra):
    import zarr

    from napari_cnnvision.cli.main import main

    z = zarr.open_array(str(tmp_path / "x.zarr"), mode="w", shape=(40, 40), chunks=(20, 20), dtype=np.uint16,
                        zarr_format=2)
    z[:] = 7
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert main(["segment", str(tmp_path / "x.zarr"), "--out", str(tmp_path), "--model", "nuclei-unet", *extra]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "x.zarr"), mode="r")[:], 7)


def test_streamed_object_table_is_the_plain_writers_file(tmp_path):
    from napari_cnnvision.core.tables import write_table
    from napari_cnnvision.scaleout.large import write_table_streamed

    rng = np.random.default_rng(2)
    n = 45
    table = {"label": np.arange(1, n + 1), "area": rng.integers(1, 99, n).astype(float),
             "centroid_y": rng.random(n) * 1e4, "centroid_x": rng.random(n), "probability": rng.random(n)}
    table["probability"][[3, 7]] = np.nan
    write_table(tmp_path / "a.csv", table)
    write_table_streamed(tmp_path / "b.csv", table, rows=10)  # in 5 pieces
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_each_window_leaves_no_network_output_cached(tmp_path, monkeypatch):
    """The backends cache their last images' network outputs (a threshold change re-runs only the
    post-processing); block-wise every window is a new image, so the caches are emptied after each
    window instead of holding the last windows' outputs (StarDist: 4 of them, ~0.9 GB at 2560²)."""
    import importlib

    from scipy import ndimage

    from napari_cnnvision import api
    from napari_cnnvision.core.cache import LRUCache
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.core.results import SegmentationResult
    from napari_cnnvision.scaleout import blockwise

    caches = [getattr(importlib.import_module(m), a) for m, a in blockwise.OUTPUT_CACHES]
    assert caches and all(isinstance(c, LRUCache) for c in caches)
    for c in caches:  # earlier tests in this process may have left entries
        c.clear()
    seen = []

    def segment(x, card, **kw):  # a stand-in backend: caches its output as the real ones do
        seen.append(sum(len(c) for c in caches))
        for c in caches:
            c.put(("window", len(seen)), np.zeros((3, 8, 8), np.float32))
        lab, n = ndimage.label(np.asarray(x) > 0.5)
        com = ndimage.center_of_mass(np.ones_like(lab), lab, range(1, n + 1))
        table = {"label": np.arange(1, n + 1), "centroid_y": np.array([c[0] for c in com]),
                 "centroid_x": np.array([c[1] for c in com]), "probability": np.ones(n)}
        return SegmentationResult(lab.astype(np.int32), table, card.name)

    monkeypatch.setattr(api, "segment", segment)
    card = ModelRegistry().get("nuclei-unet")
    table = blockwise.segment_file_blockwise(_nuclei((150, 130), 4, 25), tmp_path / "l.zarr", card, block=64)
    assert len(seen) == 9 and seen == [0] * 9  # each window found the caches empty
    assert all(len(c) == 0 for c in caches) and len(table["label"]) >= 10


def test_a_staged_output_older_than_the_stale_age_is_still_moved_in(tmp_path):
    """A block-wise run writes into a staged folder whose own mtime is set at its start; a run longer
    than STALE_TMP_SECONDS must not have that folder deleted as a stale leftover when it is moved in."""
    from napari_cnnvision.core import io

    dest = tmp_path / "big.zarr"
    with io.staged_dir(dest) as tmp:
        (tmp / "0").mkdir()
        (tmp / "0" / "0.0").write_bytes(b"chunk")
        old = __import__("time").time() - 2 * io.STALE_TMP_SECONDS
        os.utime(tmp, (old, old))
        leftover = tmp_path / ".big.zarr.killed.tmp"  # a really stale one beside it is still cleaned
        leftover.mkdir()
        os.utime(leftover, (old, old))
    assert (dest / "0" / "0.0").read_bytes() == b"chunk"
    assert not leftover.exists()
