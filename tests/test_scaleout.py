"""Batches on a Dask cluster (scaleout/): the same outputs as the plain command, errors.csv, re-runs
that skip, framework resources, and a worker killed mid-batch (real `dask scheduler` / `dask worker`
processes on localhost).

Outputs are compared byte for byte with a plain single-process run that uses as many framework
threads as each Dask worker does: float columns (a U-Net object's probability) depend on the
number of threads in their last digits.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

BIN = Path(sys.executable).parent
CLI = str(BIN / "napari-cnnvision")
N_IMAGES = 10
THREADS = str(max(1, (os.cpu_count() or 1) // 2))  # what a LocalCluster of 2 gives each worker


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS, "OPENBLAS_NUM_THREADS": THREADS,
           **extra}
    env.pop("QT_API", None)
    return env


def _nuclei(rng, shape=(112, 112), n=9):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape, np.float32)
    for _ in range(n):
        cy, cx, r = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8), rng.uniform(4, 8)
        img += 1000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img + rng.normal(0, 20, shape), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """N_IMAGES small synthetic nuclei images and their outputs from the plain command."""
    root = tmp_path_factory.mktemp("scaleout")
    src = root / "in"
    src.mkdir()
    rng = np.random.default_rng(7)
    for k in range(N_IMAGES):
        tifffile.imwrite(src / f"img{k:02d}.tif", _nuclei(rng))
    ref = root / "ref"
    r = subprocess.run([CLI, "segment", str(src), "--out", str(ref), "--model", "nuclei-unet", "--quiet"],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"segmented {N_IMAGES}," in r.stdout
    return src, ref


def _assert_same_outputs(out: Path, ref: Path):
    names = sorted(p.name for p in ref.iterdir())
    assert len(names) == 2 * N_IMAGES
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_workers_2_same_outputs_errors_csv_and_rerun_skips(batch, tmp_path):
    src, ref = batch
    inp = tmp_path / "in"
    shutil.copytree(src, inp)
    (inp / "bad.tif").write_bytes(b"not a tiff at all")  # sorts first: fails while the others go on
    out = tmp_path / "out"
    cmd = [CLI, "segment", str(inp), "--out", str(out), "--model", "nuclei-unet", "--workers", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"segmented {N_IMAGES}, skipped 0 (already done), failed 1" in r.stdout
    assert "dashboard: " in r.stderr and "dask: scheduler tcp://" in r.stderr
    assert f"{N_IMAGES}/{N_IMAGES + 1} images" in r.stderr or f"{N_IMAGES + 1}/{N_IMAGES + 1} images" in r.stderr
    lines = (out / "errors.csv").read_text().splitlines()
    assert lines[0] == "image,error" and len(lines) == 2
    assert lines[1].startswith(str(inp / "bad.tif") + ",") and "cannot read image" in lines[1]
    assert not (out / "bad.tif").exists()
    errors_csv = (out / "errors.csv").read_bytes()
    (out / "errors.csv").unlink()
    _assert_same_outputs(out, ref)
    (out / "errors.csv").write_bytes(errors_csv)

    # a re-run with the bad file gone: nothing to do, no cluster started, the stale error table removed
    (inp / "bad.tif").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"segmented 0, skipped {N_IMAGES} (already done), failed 0" in r.stdout
    assert "dask:" not in r.stderr
    assert not (out / "errors.csv").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == {k: v for k, v in before.items()
                                                                     if k != "errors.csv"}


def _wait_for(pred, timeout, what):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_real_scheduler_and_workers_one_killed_mid_batch(batch, tmp_path):
    from distributed import Client

    from napari_cnnvision.scaleout import run_batch

    src, ref = batch
    sched_file = tmp_path / "scheduler.json"
    dask = str(BIN / "dask")
    procs = []
    log = open(tmp_path / "dask.log", "w")
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                                       str(sched_file)], stdout=log, stderr=log, env=_env()))
        _wait_for(sched_file.exists, 60, "the scheduler file")
        worker = [dask, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1", "--no-nanny",
                  "--no-dashboard"]
        torch_workers = [subprocess.Popen(worker + ["--resources", "torch=1", "--name", f"torch-{k}"], stdout=log,
                                          stderr=log, env=_env()) for k in range(2)]
        tf_worker = subprocess.Popen(worker + ["--resources", "tf=1", "--name", "tf-0"], stdout=log, stderr=log,
                                     env=_env())
        procs += torch_workers + [tf_worker]
        with Client(scheduler_file=str(sched_file), timeout=60) as watch:
            watch.wait_for_workers(3, timeout=120)
            by_name = {w["name"]: a for a, w in watch.scheduler_info(n_workers=-1)["workers"].items()}
            addr = {p.pid: by_name[n] for p, n in zip(torch_workers + [tf_worker], ["torch-0", "torch-1", "tf-0"])}
            out = tmp_path / "out"
            result = {}
            t = threading.Thread(target=lambda: result.update(s=run_batch(
                "segment", [src], out, "nuclei-unet", scheduler=str(sched_file), quiet=True)))
            t.start()
            # kill a torch worker that holds a task, once the batch is under way and not finished
            _wait_for(lambda: out.is_dir() and any(out.glob("*.tif")), 180, "the first output")
            processing = watch.processing()
            victim = next(p for p in torch_workers if processing.get(addr[p.pid]))
            os.kill(victim.pid, signal.SIGKILL)
            n_at_kill = len(list(out.glob("img*.tif")))
            t.join(240)
            assert not t.is_alive()
            assert victim.wait(10) == -signal.SIGKILL
            assert n_at_kill < N_IMAGES  # the kill happened mid-batch
            s = result["s"]
            assert (s.done, s.failed, s.skipped) == (N_IMAGES, 0, 0), s.errors
            _assert_same_outputs(out, ref)
            assert not (out / "errors.csv").exists()
            # TensorFlow's worker never ran a PyTorch task (the resources kept them apart)
            loaded = watch.run(lambda: "torch" in sys.modules, workers=[addr[tf_worker.pid]])
            assert loaded == {addr[tf_worker.pid]: False}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def test_errors_table_name_clash_and_wrong_framework_worker(tmp_path, monkeypatch):
    from napari_cnnvision import api
    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.scaleout import run_batch
    from napari_cnnvision.scaleout.tasks import WrongWorker, compute

    tifffile.imwrite(tmp_path / "errors.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(ValueError, match="error table errors.csv"):
        run_batch("segment", [tmp_path / "errors.tif"], tmp_path / "out", "nuclei-unet", workers=1)
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written
    monkeypatch.setattr(api, "_must_isolate", lambda job: True)  # the other framework is loaded "here"
    card = ModelRegistry().get("nuclei-unet")
    with pytest.raises(WrongWorker, match="--resources torch=1"):
        compute("segment", str(tmp_path / "errors.tif"), card_payload(card), {})


def test_cli_options_are_exclusive_and_documented(capsys):
    from napari_cnnvision.cli.main import build_parser

    p = build_parser()
    for cmd in ("segment", "detect", "localize"):
        a = p.parse_args([cmd, "x.tif", "--out", "o", "--workers", "3"])
        assert (a.workers, a.scheduler) == (3, None)
        a = p.parse_args([cmd, "x.tif", "--out", "o", "--scheduler", "tcp://h:8786"])
        assert (a.workers, a.scheduler) == (None, "tcp://h:8786")
        with pytest.raises(SystemExit):
            p.parse_args([cmd, "x.tif", "--out", "o", "--workers", "2", "--scheduler", "tcp://h:8786"])
        assert "not allowed with argument" in capsys.readouterr().err


TINY_MODELS = """
import sys, torch
from napari_cnnvision.backends.detection.models import build_detector, save_detector
from napari_cnnvision.backends.localizer.io import save_model
from napari_cnnvision.backends.localizer.model import LocalizerConfig, build_localizer
cfg = {"arch": "yolo", "classes": ["red", "green"], "in_channels": 3, "input_size": 64, "widths": [8, 16, 32],
       "depths": [0, 0, 0], "stride": 4, "head_channels": 8, "score_thresh": 0.05, "nms_thresh": 0.5}
torch.manual_seed(0)
save_detector(build_detector(cfg), cfg, sys.argv[1] + "/tiny-yolo")
config = LocalizerConfig(n_classes=2, input_size=(32, 48), widths=(4, 8, 8))
save_model(sys.argv[1] + "/tiny-loc", build_localizer(config), config, ["cell", "debris"])
"""


def test_detect_and_localize_workers_2_write_the_plain_commands_files(tmp_path):
    """COCO + per-image CSVs (detect) and the one table (localize) through --workers 2: byte for
    byte the plain commands' (same framework threads), errors.csv, re-runs skip without a cluster."""
    subprocess.run([sys.executable, "-c", TINY_MODELS, str(tmp_path)], check=True, timeout=120, env=_env())
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        tifffile.imwrite(inp / f"rgb{k}.tif", (rng.random((80, 96, 3)) * 255).astype(np.uint8))
    (inp / "broken.png").write_bytes(b"\x89PNG but no more")
    env = _env()  # the plain runs get the framework threads of a worker of --workers 2
    run = lambda cmd, model, out, *extra: subprocess.run(
        [CLI, cmd, str(inp), "--out", str(out), "--model", str(tmp_path / model), "--quiet", *extra],
        capture_output=True, text=True, timeout=300, env=env)
    det, loc = tmp_path / "det", tmp_path / "loc"
    for cmd, model, out, extra, verb in (("detect", "tiny-yolo", det, ["--score-thresh", "0"], "detected"),
                                         ("localize", "tiny-loc", loc, [], "localized")):
        r = run(cmd, model, tmp_path / f"{cmd}-plain", *extra)
        assert r.returncode == 1 and f"{verb} 3," in r.stdout, r.stderr[-2000:]
        r = run(cmd, model, out, *extra, "--workers", "2")
        assert r.returncode == 1 and f"{verb} 3, skipped 0 (already done), failed 1" in r.stdout, r.stderr[-2000:]
        errors = (out / "errors.csv").read_text().splitlines()
        assert len(errors) == 2 and errors[1].startswith(str(inp / "broken.png"))
        (out / "errors.csv").unlink()
    (inp / "broken.png").unlink()
    for cmd, model, out, extra, verb in (("detect", "tiny-yolo", det, ["--score-thresh", "0"], "detected"),
                                         ("localize", "tiny-loc", loc, [], "localized")):
        r = run(cmd, model, out, *extra, "--workers", "2")
        assert r.returncode == 0 and f"{verb} 0, skipped 3 (already done), failed 0" in r.stdout, r.stderr[-2000:]
        assert "dask:" not in r.stderr
    for mine, ref, names in ((det, tmp_path / "detect-plain", ["detections.json", "rgb0.csv", "rgb1.csv", "rgb2.csv"]),
                             (loc, tmp_path / "localize-plain", ["localizations.csv"])):
        assert sorted(p.name for p in ref.iterdir()) == names
        assert sorted(p.name for p in mine.iterdir()) == names
        for name in names:  # the COCO file too, although the re-runs rewrote it from what they read back
            assert (mine / name).read_bytes() == (ref / name).read_bytes(), name
    assert len(json.loads((det / "detections.json").read_text())["annotations"]) > 0
    assert len((loc / "localizations.csv").read_text().splitlines()) == 4


def test_segment_blocks_stitches_objects_across_block_borders_like_a_whole_image_run(tmp_path):
    import zarr

    rng = np.random.default_rng(5)
    size, block = 288, 96
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    centres = [(cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)) for cy in range(12, size, 24)
               for cx in range(12, size, 24)]
    centres += [(b + rng.uniform(-1, 1), c) for b in (96, 192) for c in range(24, size, 48)]  # on the borders
    centres += [(c, b + rng.uniform(-1, 1)) for b in (96, 192) for c in range(36, size, 48)]
    for cy, cx in centres:
        r = rng.uniform(4, 6)
        img += 1000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    tifffile.imwrite(tmp_path / "big.tif", np.clip(img + rng.normal(0, 20, img.shape), 0, 65535).astype(np.uint16))
    seg = lambda out, *extra: subprocess.run([CLI, "segment", str(tmp_path / "big.tif"), "--out", str(out), "--model",
                                              "nuclei-unet", "--tiles", "none", "--quiet", *extra],
                                             capture_output=True, text=True, timeout=300, env=_env())
    r = seg(tmp_path / "whole")
    assert r.returncode == 0, r.stderr[-2000:]
    r = seg(tmp_path / "blocks", "--blocks", str(block))
    assert r.returncode == 0 and "segmented 1," in r.stdout, r.stderr[-2000:]
    root = zarr.open_group(str(tmp_path / "blocks" / "big.zarr"), mode="r")
    assert root.attrs["multiscales"][0]["datasets"][0]["path"] == "0" and "image-label" in root.attrs
    assert root["0"].chunks == (block, block)
    b = np.asarray(root["0"]).astype(np.int64)
    a = tifffile.imread(tmp_path / "whole" / "big.tif").astype(np.int64)
    # no object cut in two at a border: every border-straddling whole-image object is one block object
    both = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a, area_b = np.bincount(a.ravel()), np.bincount(b.ravel())
    iou = inter / (area_a[pairs[0]] + area_b[pairs[1]] - inter)
    na, nb, tp = len(np.unique(a)) - 1, len(np.unique(b)) - 1, int((iou > 0.5).sum())
    assert na >= len(centres) * 0.8  # (a few touching ones merge)
    assert tp / (na + nb - tp) >= 0.99, (na, nb, tp)  # AP@0.5 of the block-wise result against the whole run
    on_border = [lab for lab in np.unique(a[[95, 96, 191, 192], :]) if lab] + \
        [lab for lab in np.unique(a[:, [95, 96, 191, 192]]) if lab]
    assert len(on_border) > 10
    matched = set(pairs[0][iou > 0.5].tolist())
    assert all(lab in matched for lab in on_border)
    rows = (tmp_path / "blocks" / "big.csv").read_text().splitlines()
    assert rows[0] == "label,area,centroid_y,centroid_x,probability" and len(rows) - 1 == nb
    assert "skipped 1" in seg(tmp_path / "blocks", "--blocks", str(block)).stdout


def test_coco_file_rewritten_from_what_a_rerun_read_back_is_unchanged(tmp_path):
    """A re-run of detect (plain or --workers) rewrites DIR/detections.json from the earlier images'
    entries it read back: those must come out byte for byte as first written (the cause of the Dask
    run's COCO boxes once differing from a plain run: areas recomputed from the rounded boxes)."""
    from napari_cnnvision.cli.detect import _previous, coco_entry, write_coco
    from napari_cnnvision.core.results import DetectionResult

    rng = np.random.default_rng(0)
    y0, x0 = rng.uniform(0, 50, (2, 40))
    boxes = np.stack([y0, x0, y0 + rng.uniform(3, 20, 40), x0 + rng.uniform(3, 20, 40)], 1).astype(np.float32)
    res = DetectionResult(boxes.astype(np.float64), rng.integers(0, 2, 40), rng.random(40), ["a", "b"], "m", (80, 96))
    path = tmp_path / "detections.json"
    write_coco(path, {"one.tif": coco_entry("one.tif", res)}, ["a", "b"])
    first = path.read_bytes()
    write_coco(path, _previous(path, ["a", "b"], False), ["a", "b"])  # a re-run that skipped everything
    assert path.read_bytes() == first
    # a re-run that adds an image: the earlier image's annotations are kept as written, the new one's follow
    write_coco(path, {**_previous(path, ["a", "b"], False), "two.tif": coco_entry("two.tif", res)}, ["a", "b"])
    d = json.loads(path.read_text())
    old = json.loads(first)["annotations"]
    assert d["annotations"][:40] == old
    assert [a["bbox"] for a in d["annotations"][40:]] == [a["bbox"] for a in old]
    assert {a["image_id"] for a in d["annotations"][40:]} == {2}
    assert [a["id"] for a in d["annotations"]] == list(range(1, 81))


def test_segment_blocks_with_workers_runs_the_blocks_as_dask_tasks_with_the_single_process_outputs(tmp_path):
    """--blocks N --workers 2: each window a Dask task, stitched in order by the command; the labels
    and the object table are byte for byte the single-process --blocks run's; a re-run skips
    without starting a cluster."""
    import zarr

    rng = np.random.default_rng(11)
    tifffile.imwrite(tmp_path / "big.tif", _nuclei(rng, shape=(160, 176), n=40))
    seg = lambda out, *extra: subprocess.run(  # noqa: E731
        [CLI, "segment", str(tmp_path / "big.tif"), "--out", str(out), "--model", "nuclei-unet", "--tiles", "none",
         "--blocks", "64", *extra], capture_output=True, text=True, timeout=300, env=_env())
    r = seg(tmp_path / "one", "--quiet")
    assert r.returncode == 0 and "segmented 1," in r.stdout, r.stderr[-2000:]
    r = seg(tmp_path / "dask", "--workers", "2")
    assert r.returncode == 0 and "segmented 1," in r.stdout, r.stderr[-2000:]
    assert "dask: scheduler tcp://" in r.stderr and "block 9/9" in r.stderr  # 3 x 3 windows, each a task
    one = zarr.open_group(str(tmp_path / "one" / "big.zarr"), mode="r")["0"]
    got = zarr.open_group(str(tmp_path / "dask" / "big.zarr"), mode="r")["0"]
    assert got.chunks == one.chunks == (64, 64)
    a, b = np.asarray(one), np.asarray(got)
    assert len(np.unique(a)) > 20
    np.testing.assert_array_equal(a, b)
    assert (tmp_path / "dask" / "big.csv").read_bytes() == (tmp_path / "one" / "big.csv").read_bytes()
    r = seg(tmp_path / "dask", "--workers", "2")
    assert r.returncode == 0 and "skipped 1" in r.stdout and "dask:" not in r.stderr, r.stderr[-2000:]


def _worker_state():
    import sys as _sys

    import dask

    from napari_cnnvision.scaleout import warm

    warm.wait()
    return {"torch": "torch" in _sys.modules, "timings": dict(warm.timings),
            "profile": dask.config.get("distributed.worker.profile.enabled")}


def test_local_cluster_workers_load_the_model_while_the_cluster_starts(tmp_path):
    """--workers: each worker imports the framework and loads the model from its start (a Dask
    preload), before any task, and runs with Dask's housekeeping made less frequent (no profiler)."""
    import io

    from napari_cnnvision.backends.dispatch import card_payload
    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.scaleout.cluster import connect

    payload = card_payload(ModelRegistry().get("nuclei-unet"))
    with connect(1, None, "torch", io.StringIO(), warm=("segment", payload)) as client:
        (state,) = client.run(_worker_state).values()
    assert state["torch"] and state["profile"] is False
    assert "error" not in state["timings"] and state["timings"]["total_s"] > 0, state
