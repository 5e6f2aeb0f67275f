"""Where a PyTorch StarDist training step spends its time (``backends/stardist/torch_train``).

Times, on this machine's GPU if it has one (else the CPU), the parts of one training step for
each grid: drawing a batch of augmented patches with their probability targets (CPU, one
DataLoader worker's share), the star distances (``star_dist``, on the device), and the network's
forward + backward + Adam step (float32/TF32, and bfloat16 autocast on a GPU). Medians over
``--repeats`` after one warm-up; the last column is the step rate the slowest part allows
(the DataLoader spreads patch drawing over ``--workers``).

    python benchmarks/bench_stardist_torch_train.py --batch 16 --repeats 10

Uses the DSB2018 train images in ../shared/data/dsb2018_fluo if present, else StarDist's sample.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _data(n):
    from napari_cnnvision.backends.stardist import torch_train as T
    from napari_cnnvision.backends.stardist.train import area_tiles
    from napari_cnnvision.core.normalize import percentile_normalize

    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dsb2018_fluo")
    if os.path.isdir(root):
        from napari_cnnvision.core.datasets import load_segmentation_split

        d = load_segmentation_split(root, "train", n)
        xs, ys, src = d.images, d.masks, f"dsb2018_fluo train ({n} images)"
    else:
        from stardist import data

        x, y = data.test_image_nuclei_2d(return_mask=True)
        xs, ys, src = [x], [y], "stardist sample image"
    X = [percentile_normalize(x) for x in xs]
    Y = [T.fill_label_holes(y.astype(np.int32)) for y in ys]
    return area_tiles(X, Y, (256, 256)), src


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--workers", type=int, default=12, help="DataLoader workers assumed for the rate")
    p.add_argument("--grids", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=60)
    a = p.parse_args(argv)

    import torch

    from napari_cnnvision.backends.stardist import torch_train as T

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    (X, Y), src = _data(a.images)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; data: {src}; batch {a.batch}; torch {torch.__version__}; median of {a.repeats}")

    def timed(f, sync=True):
        f()
        out = []
        for _ in range(a.repeats):
            if sync and dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            if sync and dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    for g in a.grids:
        sampler = T.PatchSampler(X, Y, 256, g, seed=0)
        batch = {}

        def draw():
            batch["b"] = sampler.batch(a.batch)

        t_data = timed(draw, sync=False)
        xb, yb, pb, steps = batch["b"]
        x = torch.from_numpy(xb[:, None]).to(dev)
        y = torch.from_numpy(yb).to(dev)
        prob = torch.from_numpy(pb[:, None]).to(dev)
        t_sd = timed(lambda: T.star_dist(y, 32, g, max_steps=steps))
        dist = T.star_dist(y, 32, g, max_steps=steps)
        rows = [("patches + prob targets (1 worker)", t_data, t_data / a.workers), ("star_dist", t_sd, t_sd)]
        for bf16 in ([False, True] if dev.type == "cuda" else [False]):
            net = T.build_network(T.TorchStarDistConfig(grid=g)).to(dev)
            if dev.type == "cuda":
                net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(net.parameters(), 1e-4)

            def step():
                with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                    pl, dp = net(x)
                loss = T.stardist_loss(pl.float(), dp.float(), prob, dist)[0]
                opt.zero_grad()
                loss.backward()
                opt.step()

            t_net = timed(step)
            rows.append((f"network step ({'bf16' if bf16 else 'fp32/tf32'})", t_net, t_net))
        print(f"\ngrid {g} (ray steps bound {steps}):")
        for label, t, eff in rows:
            print(f"  {label:36s} {t * 1e3:9.1f} ms   -> at most {1 / eff:7.1f} steps/s")


if __name__ == "__main__":
    main()
