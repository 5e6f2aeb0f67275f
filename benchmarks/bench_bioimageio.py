"""A real bioimage.io package through the plugin: accuracy and speed on dsb2018_fluo val.

    python benchmarks/bench_bioimageio.py [--n 12] [--weights torchscript|onnx] [--package PATH]
    python benchmarks/bench_bioimageio.py --browse [--repeat 5] [--package PATH]

1. Accuracy through the CLI: ``napari-cnnvision segment VAL_IMAGES --model PACKAGE`` and the same
   with ``--model nuclei-unet``; AP = TP/(TP+FP+FN) at IoU 0.5 (and F1) on the written labels.
   NOTE: the shared package (``bioimageio_unet2d_nuclei_broad``) was trained on DSB2018, the source
   of dsb2018_fluo, val included: its score is biased upward and is no generalisation figure.
2. Speed per image, in this process, same run: the plugin's backend (package pre-processing,
   tiles, network, post-processing, seeded watershed) vs ``bioimageio.core`` directly
   (``PredictionPipeline.predict_sample_with_blocking`` on the image mirrored up to the
   package's fixed 512x512 input, no instances), with the same weights; both warmed up first.

``--browse``: what the Segment widget does in napari's process when the user browses to a package
(read its card and thresholds), each in a fresh process with the plugin's core already imported
(as in napari): from the YAML alone (now) vs validated with ``bioimageio.spec`` (before); medians.

Skips (exit 0) when the shared data or package folder is missing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = HERE.parent / "shared" / "data" / "dsb2018_fluo"
PACKAGE = HERE.parent / "shared" / "models" / "bioimageio_unet2d_nuclei_broad"


def _cli(args: list[str]) -> float:
    exe = Path(sys.executable).with_name("napari-cnnvision")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_cnnvision.cli.main"]
    t0 = time.perf_counter()
    subprocess.run(cmd + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _score(ids, out: Path):
    import tifffile

    from napari_cnnvision.backends.evaluate import score_segmentations

    gts = [tifffile.imread(DATA / "masks" / f"{i}.tif") for i in ids]
    preds = [tifffile.imread(out / f"{i}.tif") for i in ids]
    return score_segmentations(gts, preds).at(0.5)


def _direct(descr, fmt: str):
    """``bioimageio.core`` on its own: pipeline, then one call per image (mirrored up to 512)."""
    import numpy as np
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline

    pipe = create_prediction_pipeline(descr, weight_format=fmt, devices=["cpu"])

    def run(img):
        h, w = img.shape
        x = np.pad(img.astype(np.float32), ((0, max(0, 512 - h)), (0, max(0, 512 - w))), mode="reflect")
        s = Sample(members={"raw": Tensor.from_numpy(x[None, None], dims=("batch", "channel", "y", "x"))},
                   stat={}, id="bench")
        out = pipe.predict_sample_with_blocking(s)
        return out.members["probability"].data.values[0, 0, :h, :w]

    return run


BROWSE = r"""
import sys, time
from napari_cnnvision.core.registry import read_card
from napari_cnnvision.backends.dispatch import thresholds_for
from napari_cnnvision.backends.bioimageio.package import package_card
t = time.perf_counter()
card = read_card(sys.argv[1], "path") if sys.argv[2] == "yaml" else package_card(sys.argv[1], "path", validate=True)
thresholds_for(card)
print(time.perf_counter() - t)
"""


def browse(package: str, repeat: int) -> int:
    import statistics

    print(f"browsing to {Path(package).name} (read card + thresholds, fresh process each, {repeat} runs)")
    for mode, what in (("yaml", "from the YAML (now)"), ("spec", "bioimageio.spec validation (before)")):
        times = [float(subprocess.run([sys.executable, "-c", BROWSE, package, mode], check=True, text=True,
                                      capture_output=True).stdout.split()[-1]) for _ in range(repeat)]
        print(f"  {what:<38} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12, help="number of val images (0: all 68)")
    p.add_argument("--weights", default="torchscript", choices=["torchscript", "onnx"])
    p.add_argument("--package", default=str(PACKAGE))
    p.add_argument("--browse", action="store_true", help="time reading a package as the Segment widget's browse does")
    p.add_argument("--repeat", type=int, default=5, help="--browse: runs per variant")
    args = p.parse_args(argv)
    if args.browse:
        if not Path(args.package).exists():
            print("skipped: the bioimage.io package is missing")
            return 0
        return browse(args.package, args.repeat)
    if not DATA.is_dir() or not Path(args.package).is_dir():
        print("skipped: ../shared/data/dsb2018_fluo or the bioimage.io package is missing")
        return 0
    os.environ.setdefault("NAPARI_CNNVISION_CUDA_DEVICES", "")
    ids = (DATA / "splits" / "val.txt").read_text().split()
    ids = ids[:args.n] if args.n else ids
    files = [str(DATA / "images" / f"{i}.tif") for i in ids]
    print(f"dsb2018_fluo val: {len(ids)} images, package weights {args.weights}, CPU")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the CLI picks the package's default weights (torchscript first); the speed part below uses --weights
        t_pkg = _cli(["segment", *files, "--model", args.package, "--out", str(tmp / "pkg"), "--quiet"])
        t_unet = _cli(["segment", *files, "--model", "nuclei-unet", "--out", str(tmp / "unet"), "--quiet"])
        s_pkg, s_unet = _score(ids, tmp / "pkg"), _score(ids, tmp / "unet")
    print(f"{'model':<34} {'AP@0.5':>7} {'F1@0.5':>7} {'CLI s (incl. start-up)':>23}")
    print(f"{'bioimageio_unet2d_nuclei_broad *':<34} {s_pkg['ap']:7.3f} {s_pkg['f1']:7.3f} {t_pkg:23.1f}")
    print(f"{'nuclei-unet':<34} {s_unet['ap']:7.3f} {s_unet['f1']:7.3f} {t_unet:23.1f}")
    print("* trained on DSB2018 (the source of these val images): biased upward, not a generalisation score")

    import numpy as np
    import tifffile

    from napari_cnnvision.backends.bioimageio.package import load_package
    from napari_cnnvision.backends.dispatch import run_model
    from napari_cnnvision.core.registry import read_card

    card = read_card(args.package, "path")
    imgs = [tifffile.imread(f) for f in files]
    direct = _direct(load_package(args.package)[0], args.weights)
    run_model(imgs[0], card, task="segment", weights=args.weights)  # warm-up (TorchScript profiles its first calls)
    direct(imgs[0])
    direct(imgs[0])
    ours, net, theirs = [], [], []
    for img in imgs:
        t0 = time.perf_counter()
        res = run_model(np.ascontiguousarray(img) + 0, card, task="segment", weights=args.weights)
        ours.append(time.perf_counter() - t0)
        net.append(res.timings["network_s"])
        t0 = time.perf_counter()
        direct(img)
        theirs.append(time.perf_counter() - t0)
    mo, mn, mt = (float(np.mean(v)) for v in (ours, net, theirs))
    print(f"per image ({args.weights}, {len(imgs)} images): plugin {mo:.3f} s (network part {mn:.3f} s), "
          f"bioimageio.core directly {mt:.3f} s (probabilities only); ratio plugin/direct {mo / mt:.2f} "
          f"(network part {mn / mt:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
