"""U-Net upsampling modes (checkerboard artefacts) and tiled-inference memory.

Part 1, checkerboard: for each upsampling mode ("nearest", "bilinear", "transposed",
"unpool" = bed of nails: max-unpooling at the encoder's pooling indices, SegNet's decoder) a
U-Net is freshly initialised (``--seeds`` seeds) and then briefly trained (``--steps``
steps on synthetic disks). For each, the network output (logits, and the interior
probability) on a constant image and on a synthetic image is measured with
:func:`~napari_cnnvision.backends.unet.model.checkerboard_energy` (share of the output's
spatial variation at the Nyquist frequencies, i.e. a period-2 pattern; 0..1) and
``checkerboard_amplitude`` (RMS of the period-2 component relative to the output's RMS).
A border of ``--crop`` pixels is ignored (zero padding). Per mode also: the parameter
count, the forward time on one ``--image-size``² image (median of ``--reps``), the seconds
per training step, the final training loss and AP@0.5 of the trained network's instances
(seeded watershed) on 3 held-out synthetic images. A last table puts every figure of every
mode side by side (medians over the seeds).

Part 2, memory: tiled inference (512 px tiles, the default) on 1024² and 2048² images,
each in a fresh process and for each mode of ``--mem-modes`` (default: all): the peak resident memory above what the process held just
before the call (the kernel's high-water mark ``VmHWM``, reset just before the call via
``/proc/self/clear_refs``; sampled every 2 ms where that is not possible),
the same minus the (3, H, W) float32 result the call has to return, and the peak of
numpy allocations (``tracemalloc``). An untiled run (one window for the whole image) is
shown for contrast. Goal: the tiled working memory at 2048² is within 1.5x of 1024².

    .venv/bin/python benchmarks/bench_unet_upsampling.py [--steps 150] [--threads 1] [--sizes 1024 2048]
        [--modes nearest bilinear transposed unpool] [--mem-modes bilinear]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _bench_util import machine_note  # noqa: E402



def make_disks(shape, n, rng, rmin=5.0, rmax=9.0, noise=0.15):
    h, w = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    placed = []
    for _ in range(n * 30):
        if len(placed) >= n:
            break
        r = rng.uniform(rmin, rmax)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        if any(np.hypot(cy - y, cx - x) < r + rr for y, x, rr in placed):
            continue
        placed.append((cy, cx, r))
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(placed)
    bright = rng.uniform(0.6, 1.0, len(placed) + 1)
    img = 0.2 * yy / h + (labels > 0) * bright[labels] + rng.normal(0, noise, shape)
    return img.astype(np.float32), labels


# -- part 1 ----------------------------------------------------------------------------
def _measure(net, x, crop):
    import torch

    from napari_cnnvision.backends.unet.model import checkerboard_amplitude, checkerboard_energy

    net.eval()
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)[None, None])[0]
        interior = torch.softmax(logits, 0)[1].numpy()
    logits = logits.numpy()
    return {"logits_energy": checkerboard_energy(logits, crop), "logits_amp": checkerboard_amplitude(logits, crop),
            "interior_energy": checkerboard_energy(interior, crop),
            "interior_amp": checkerboard_amplitude(interior, crop)}


def _train_briefly(net, steps, rng, seed):
    """``steps`` Adam steps on 64² crops of 6 synthetic 128² images; (final loss, seconds per step)."""
    import torch
    import torch.nn.functional as F

    from napari_cnnvision.backends.unet.targets import labels_to_target

    torch.manual_seed(seed)
    pairs = [make_disks((128, 128), 30, rng) for _ in range(6)]
    X = [(a - a.min()) / np.ptp(a) for a, _ in pairs]
    Y = [labels_to_target(b) for _, b in pairs]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    w = torch.tensor([1.0, 1.0, 2.0])
    net.train()
    loss = None
    t = time.perf_counter()
    for _ in range(steps):
        xb, yb = [], []
        for _ in range(4):
            i = rng.integers(len(X))
            r, c = rng.integers(0, 128 - 64 + 1, 2)
            k = int(rng.integers(4))
            xb.append(np.rot90(X[i][r:r + 64, c:c + 64], k).copy())
            yb.append(np.rot90(Y[i][r:r + 64, c:c + 64], k).copy())
        xb = torch.from_numpy(np.stack(xb).astype(np.float32))[:, None]
        yb = torch.from_numpy(np.stack(yb).astype(np.int64))
        opt.zero_grad()
        loss = F.cross_entropy(net(xb), yb, weight=w)
        loss.backward()
        opt.step()
    return float(loss.item()), (time.perf_counter() - t) / max(steps, 1)


def _forward_ms(net, x, reps):
    import torch

    net.eval()
    t = torch.from_numpy(x)[None, None]
    times = []
    with torch.inference_mode():
        net(t)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            net(t)
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _val_ap(net, val):
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.backends.unet.predict import predict_probs
    from napari_cnnvision.backends.unet.targets import instances_from_probs

    preds = [instances_from_probs(predict_probs(net, x[None], tile_size=None), 0.5, 0.5, 8) for x, _ in val]
    return float(score_segmentations([y for _, y in val], preds).at(0.5)["ap"])


# figures of the side-by-side table: (key, label, format)
SUMMARY = [("params", "parameters", "{:.0f}"), ("forward_ms", "forward ms / image", "{:.1f}"),
           ("fresh_const_logits_energy", "fresh, constant: logits energy", "{:.3g}"),
           ("fresh_const_interior_energy", "fresh, constant: interior energy", "{:.3g}"),
           ("fresh_synth_logits_energy", "fresh, synthetic: logits energy", "{:.3g}"),
           ("train_s_per_step", "training s / step", "{:.3f}"), ("loss", "final training loss", "{:.3f}"),
           ("trained_const_logits_energy", "trained, constant: logits energy", "{:.3g}"),
           ("trained_const_interior_amp", "trained, constant: interior amp", "{:.3g}"),
           ("trained_synth_logits_energy", "trained, synthetic: logits energy", "{:.3g}"),
           ("trained_synth_interior_energy", "trained, synthetic: interior energy", "{:.3g}"),
           ("trained_synth_interior_amp", "trained, synthetic: interior amp", "{:.3g}"),
           ("val_ap50", "trained: AP@0.5 (3 synthetic images)", "{:.3f}")]


def checkerboard_part(args):
    import torch

    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet

    size, crop = args.image_size, args.crop
    const = np.full((size, size), 0.5, np.float32)
    synth, _ = make_disks((size, size), int(size * size / 600), np.random.default_rng(99))
    synth = ((synth - synth.min()) / np.ptp(synth)).astype(np.float32)
    vrng = np.random.default_rng(123)
    val = []
    for _ in range(3):
        a, b = make_disks((size, size), int(size * size / 600), vrng)
        val.append((((a - a.min()) / np.ptp(a)).astype(np.float32), b))
    print(f"\n== checkerboard: depth {args.depth}, {args.filters} base filters, {size}² inputs, "
          f"border {crop} px ignored; seeds {args.seeds}; {args.steps} training steps; modes {list(args.modes)} ==")
    print("energy = share of the output's spatial variation at the Nyquist frequencies (period-2 pattern), "
          "amp = RMS of that pattern / RMS of the output")
    header = (f"{'mode':<11}{'state':<9}{'input':<10}{'logits energy':>14}{'logits amp':>12}"
              f"{'interior energy':>17}{'interior amp':>14}")
    print(header)
    summary, side = {}, {}
    for mode in args.modes:
        rows, extra = {}, {}
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = build_unet(UNetConfig(depth=args.depth, base_filters=args.filters, upsampling=mode))
            extra.setdefault("params", []).append(sum(p.numel() for p in net.parameters()))
            extra.setdefault("forward_ms", []).append(_forward_ms(net, synth, args.reps))
            res = {("fresh", "constant"): _measure(net, const, crop),
                   ("fresh", "synthetic"): _measure(net, synth, crop)}
            if args.steps:
                t = time.perf_counter()
                loss, per_step = _train_briefly(net, args.steps, np.random.default_rng(seed), seed)
                t = time.perf_counter() - t
                res[("trained", "constant")] = _measure(net, const, crop)
                res[("trained", "synthetic")] = _measure(net, synth, crop)
                ap = _val_ap(net, val)
                extra.setdefault("loss", []).append(loss)
                extra.setdefault("train_s_per_step", []).append(per_step)
                extra.setdefault("val_ap50", []).append(ap)
                print(f"  ({mode}, seed {seed}: trained {args.steps} steps in {t:.1f} s, final loss {loss:.3f}, "
                      f"AP@0.5 {ap:.3f})")
            for k, v in res.items():
                rows.setdefault(k, []).append(v)
        col = {k: float(np.median(v)) for k, v in extra.items()}
        for (state, inp), vals in rows.items():
            med = {k: float(np.median([v[k] for v in vals])) for k in vals[0]}
            summary[(mode, state, inp)] = med
            short = {"constant": "const", "synthetic": "synth"}[inp]
            col.update({f"{state}_{short}_{k}": v for k, v in med.items()})
            print(f"{mode:<11}{state:<9}{inp:<10}{med['logits_energy']:>14.3g}{med['logits_amp']:>12.3g}"
                  f"{med['interior_energy']:>17.3g}{med['interior_amp']:>14.3g}")
        side[mode] = col
    print("(medians over the seeds)")
    modes = list(args.modes)
    print(f"\n== every mode side by side (medians over seeds {args.seeds}; forward: one {size}² image, "
          f"median of {args.reps}; {args.threads} thread(s)) ==")
    print(f"{'':<38}" + "".join(f"{m:>12}" for m in modes))
    for key, label, fmt in SUMMARY:
        if all(key in side[m] for m in modes):
            print(f"{label:<38}" + "".join(f"{fmt.format(side[m][key]):>12}" for m in modes))
    fresh = {m: summary[(m, "fresh", "constant")]["logits_energy"] for m in modes}
    resampled = [fresh[m] for m in ("nearest", "bilinear") if m in fresh]
    if "transposed" in fresh and resampled:
        fresh_t, fresh_o = fresh["transposed"], max(resampled)
        print(f"fresh, constant image: transposed {fresh_t:.3g} vs nearest/bilinear at most {fresh_o:.3g} "
              f"-> {'checkerboard present only with transposed' if fresh_t > 0.5 > fresh_o else 'no clear difference'}")
    if "unpool" in fresh:
        print(f"fresh, constant image: unpool (bed of nails) {fresh['unpool']:.3g} "
              f"-> {'period-2 pattern' if fresh['unpool'] > 0.5 else 'no dominant period-2 pattern'}")
    return summary, side


# -- part 2 ----------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (VmHWM); Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class _RssSampler:
    """Fallback when VmHWM cannot be reset: poll the resident size every 2 ms."""

    def __init__(self):
        import threading

        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss_bytes())


def memory_child(size: int, tiled: bool, threads: int, mode: str = "bilinear") -> dict:
    import tracemalloc

    import torch

    from napari_cnnvision.backends.unet.model import UNetConfig, build_unet
    from napari_cnnvision.backends.unet.predict import DEFAULT_TILE, predict_probs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_unet(UNetConfig(upsampling=mode)).eval()
    rng = np.random.default_rng(0)
    x = rng.random((1, size, size), dtype=np.float32)
    predict_probs(net, x[:, :64, :64], tile_size=None)  # warm up (lazy allocations, kernels)
    tracemalloc.start()
    hwm = _reset_peak_rss()  # importing torch alone peaks far above the steady state
    sampler = None if hwm else _RssSampler()
    before = _rss_bytes()
    t = time.perf_counter()
    out = predict_probs(net, x, tile_size=DEFAULT_TILE if tiled else None)
    seconds = time.perf_counter() - t
    _, np_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _peak_rss_bytes() if hwm else sampler.stop()
    note = "" if hwm else "(sampled every 2 ms)"
    return {"size": size, "tiled": tiled, "mode": mode, "seconds": seconds, "rss_before": before, "peak_delta": peak - before,
            "result_bytes": out.nbytes, "numpy_peak": np_peak, "note": note}


def memory_part(args):
    print(f"\n== tiled-inference memory: default U-Net (depth 3, 16 base filters) per upsampling mode, 512 px "
          f"tiles, {args.threads} thread(s); each run in a fresh process ==")
    print(f"{'mode':<11}{'image':>7}{'run':>9}{'seconds':>9}{'peak RSS over before':>22}{'minus result':>14}"
          f"{'numpy peak':>12}")
    results = []
    mib = 2 ** 20
    for mode in args.mem_modes:
        for tiled in (True, False):
            for size in args.sizes:
                if not tiled and size > args.untiled_max:
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", str(size), str(int(tiled)),
                       str(args.threads), mode]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                if out.returncode != 0:
                    print(f"{mode:<11}{size:>6}² {'tiled' if tiled else 'untiled'} FAILED: {out.stderr[-500:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                print(f"{mode:<11}{size:>6}²{'tiled' if tiled else 'untiled':>9}{r['seconds']:>9.2f}"
                      f"{r['peak_delta'] / mib:>18.0f} MiB{(r['peak_delta'] - r['result_bytes']) / mib:>10.0f} MiB"
                      f"{r['numpy_peak'] / mib:>8.0f} MiB {r['note']}")
    ratios = {}
    for mode in args.mem_modes:
        tiled = {r["size"]: r["peak_delta"] - r["result_bytes"] for r in results if r["tiled"] and r["mode"] == mode}
        if len(tiled) >= 2:
            a, b = min(tiled), max(tiled)
            ratios[mode] = ratio = tiled[b] / max(tiled[a], 1)
            print(f"{mode}: tiled working memory (peak minus the result array) {b}² / {a}²: {ratio:.2f}x for "
                  f"{(b / a) ** 2:.0f}x the pixels -> goal within 1.5x: {'PASS' if ratio <= 1.5 else 'FAIL'}")
    if len(args.mem_modes) > 1 and results:
        print("\nside by side (tiled seconds / working memory MiB):")
        print(f"{'':<14}" + "".join(f"{m:>20}" for m in args.mem_modes))
        for size in args.sizes:
            cells = []
            for m in args.mem_modes:
                r = [x for x in results if x["tiled"] and x["mode"] == m and x["size"] == size]
                cells.append(f"{r[0]['seconds']:.2f} s / {(r[0]['peak_delta'] - r[0]['result_bytes']) / mib:.0f}"
                             if r else "-")
            print(f"{f'{size}² tiled':<14}" + "".join(f"{c:>20}" for c in cells))
        if ratios:
            print(f"{'ratio':<14}" + "".join(f"{ratios[m]:>19.2f}x" if m in ratios else f"{'-':>20}"
                                             for m in args.mem_modes))
    return results


def main(argv=None):
    from napari_cnnvision.backends.unet.model import UPSAMPLING

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="training steps per mode and seed (0: fresh only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed forward passes per mode and seed")
    p.add_argument("--modes", nargs="+", choices=UPSAMPLING, default=list(UPSAMPLING))
    p.add_argument("--mem-modes", nargs="+", choices=UPSAMPLING, default=list(UPSAMPLING),
                   help="upsampling modes of the memory part")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--untiled-max", type=int, default=2048, help="largest image also run untiled")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", choices=["checkerboard", "memory"], default=None)
    p.add_argument("--_mem-child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._mem_child:
        size, tiled, threads, mode = a._mem_child
        print(json.dumps(memory_child(int(size), bool(int(tiled)), int(threads), mode)))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    print(f"bench_unet_upsampling: {machine_note()}; torch {torch.__version__}")
    if a.skip != "checkerboard":
        checkerboard_part(a)
    if a.skip != "memory":
        memory_part(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
