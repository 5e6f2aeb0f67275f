"""Accuracy of segmentation models on a dataset split (default: dsb2018_fluo val).

    python benchmarks/bench_segmentation_accuracy.py [--models nuclei-stardist nuclei-unet] [--split val] [--worst 5]
                                                     [--tta] [--data ../shared/data/dsb2018_histo --inverted-luminance]

Segments every image of the split through the plugin's Python API (the same backend as the
widget and the CLI) and prints precision, recall, F1 and AP = TP/(TP+FP+FN) at IoU 0.5..0.9.
``--worst N`` also lists the N images with the most errors (FP + FN at IoU 0.5) and the size of
the objects missed (none of the predictions overlaps them at IoU 0.1, or they are split / merged:
best IoU 0.1-0.5; and the share missed per object diameter), which tells where a model loses its AP. ``--tta`` also scores each model with
test-time augmentation (8 flips / 90° turns averaged; same thresholds). ``--bootstrap N`` adds a 95% interval for AP@0.5
from N resamples of the images (with replacement), and for each further model (or mode) its paired
difference to the first: whether a gain is larger than the image-to-image noise of a 68-image split.
``--min-area N`` adds a
diagnostic score that ignores objects under N pixels in both truth and prediction (the ground
truth holds tiny annotation fragments; this shows how much of the AP they cost). ``--inverted-luminance``:
a 1-channel model gets the inverted luminance of an RGB image (``backends.channels.inverted_luminance``;
the plugin refuses RGB for it), as the H&E transfer benchmark's "before". Skips (exit 0) when the shared data
folder is missing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018_fluo"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["nuclei-stardist", "nuclei-unet"])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--worst", type=int, default=0, help="list the N images with the most errors")
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="95%% intervals of AP@0.5 (and of differences to the first model) from N image resamples")
    p.add_argument("--min-area", type=int, default=0,
                   help="diagnostic: also score without objects under this many pixels (truth and prediction)")
    p.add_argument("--inverted-luminance", action="store_true",
                   help="RGB images: a 1-channel model segments their inverted luminance")
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        print(f"skipped: no dataset at {a.data}")
        return 0

    from napari_cnnvision import api
    from napari_cnnvision.backends.evaluate import score_segmentations
    from napari_cnnvision.core.datasets import load_segmentation_split
    from napari_cnnvision.core.registry import ModelNotFound, ModelRegistry

    data = load_segmentation_split(a.data, a.split, a.limit)
    reg = ModelRegistry()
    counts = {}  # label -> per-image (tp, fp, fn) at IoU 0.5, for --bootstrap
    for name in a.models:
        try:
            card = reg.get(name)
        except ModelNotFound as exc:
            print(f"{name}: {exc}")
            continue
        for tta in (False, True) if a.tta else (False,):
            t = time.perf_counter()
            preds = [api.segment(_input_for(card, x, a.inverted_luminance), card, tta=tta).labels
                     for x in data.images]
            dt = time.perf_counter() - t
            s = score_segmentations(data.masks, preds)
            print(f"{name}{' with tta' if tta else ''} on {Path(a.data).name}/{a.split} ({s.n_images} images, "
                  f"{dt:.0f} s, {1000 * dt / s.n_images:.0f} ms/image)")
            print(f"  {'IoU':>5} {'AP':>6} {'prec':>6} {'recall':>6} {'F1':>6}")
            for i in range(len(s.iou)):
                print(f"  {s.iou[i]:5.2f} {s.ap[i]:6.3f} {s.precision[i]:6.3f} {s.recall[i]:6.3f} {s.f1[i]:6.3f}")
            if a.min_area:
                big = score_segmentations([_drop_small(m, a.min_area) for m in data.masks],
                                          [_drop_small(q, a.min_area) for q in preds])
                print(f"  without objects under {a.min_area} px: "
                      + " ".join(f"AP@{i:.1f} {v:.3f}" for i, v in zip(big.iou, big.ap)))
            if a.worst:
                _print_worst(data, preds, s, a.worst)
            if a.bootstrap:
                counts[f"{name}{' with tta' if tta else ''}"] = _per_image_counts(data.masks, preds)
    if a.bootstrap and counts:
        _print_bootstrap(counts, a.bootstrap)
    return 0


def _input_for(card, x, luminance: bool):
    if luminance and card.channels == 1 and x.ndim == 3:
        from napari_cnnvision.backends.channels import inverted_luminance

        return inverted_luminance(x)
    return x


def _best_iou(truth, pred):
    """The best IoU of each truth object (index k - 1 for label k) with any prediction."""
    import numpy as np

    t, q = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    inter = np.zeros((t.max() + 1, q.max() + 1), np.int64)
    np.add.at(inter, (t, q), 1)
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = inter[1:, 1:] / np.maximum(union[1:, 1:], 1)
    return iou.max(1) if iou.shape[1] else np.zeros(iou.shape[0])


def _per_image_counts(truths, preds):
    import numpy as np
    from stardist.matching import matching

    return np.array([[(m := matching(t, q, thresh=0.5)).tp, m.fp, m.fn] for t, q in zip(truths, preds)], float)


def _print_bootstrap(counts: dict, n: int, seed: int = 0):
    """Image-level bootstrap of AP@0.5 = sum TP / sum (TP + FP + FN); differences are paired
    (the same resampled images for every model)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_img = len(next(iter(counts.values())))
    idx = rng.integers(0, n_img, size=(n, n_img))

    def ap(c):
        s = c[idx].sum(axis=1)  # (n, 3)
        return s[:, 0] / s.sum(axis=1)

    aps = {k: ap(c) for k, c in counts.items()}
    first = next(iter(aps))
    print(f"bootstrap over images ({n} resamples of {n_img}), AP@0.5 with its 95% interval:")
    for k, v in aps.items():
        c = counts[k].sum(axis=0)
        lo, hi = np.percentile(v, [2.5, 97.5])
        line = f"  {k}: {c[0] / c.sum():.3f} [{lo:.3f}, {hi:.3f}]"
        if k != first:
            d = v - aps[first]
            dlo, dhi = np.percentile(d, [2.5, 97.5])
            line += f"; minus {first}: {np.mean(d):+.3f} [{dlo:+.3f}, {dhi:+.3f}], better in {100 * np.mean(d > 0):.0f}%"
        print(line)


def _drop_small(labels, min_area):
    import numpy as np

    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def _print_worst(data, preds, total, n):
    import numpy as np
    from stardist.matching import matching

    rows, missed, best, diam = [], [], [], []
    for name, truth, pred in zip(data.ids, data.masks, preds):
        areas = np.bincount(truth.ravel())
        present = areas[1:] > 0
        best += list(_best_iou(truth, pred)[present])
        diam += list(2 * np.sqrt(areas[1:][present] / np.pi))
        m = matching(truth, pred, thresh=0.5, report_matches=True)
        rows.append((m.fp + m.fn, name, truth.shape, m.tp, m.fp, m.fn))
        hit = {t for (t, _), sc in zip(m.matched_pairs, m.matched_scores) if sc >= 0.5}
        missed += [int(areas[k]) for k in range(1, len(areas)) if areas[k] and k not in hit]
    c = total.at(0.5)
    errors = c["fp"] + c["fn"]
    print(f"  errors at IoU 0.5: {errors} ({c['fp']} FP, {c['fn']} FN); missed objects: median area "
          f"{np.median(missed) if missed else 0:.0f} px, {sum(a < 60 for a in missed)} of {len(missed)} under 60 px")
    best, diam = np.array(best), np.array(diam)
    lost = best < 0.5
    print(f"  missed objects: {int(np.sum(best < 0.1))} overlap no prediction (best IoU < 0.1), "
          f"{int(np.sum(lost & (best >= 0.1)))} are split or merged (best IoU 0.1-0.5); missed per object diameter: "
          + ", ".join(f"{lab} {int(np.sum(lost & sel))} of {int(np.sum(sel))} ({100 * np.mean(lost[sel]):.0f}%)"
                      for lab, sel in (("< 18 px", diam < 18), ("18-30 px", (diam >= 18) & (diam < 30)),
                                       (">= 30 px", diam >= 30)) if np.any(sel)))
    for err, name, shape, tp, fp, fn in sorted(rows, reverse=True)[:n]:
        print(f"  {name[:16]:16s} {shape[0]}x{shape[1]}: TP {tp} FP {fp} FN {fn} "
              f"({100 * err / max(errors, 1):.0f}% of all errors)")


if __name__ == "__main__":
    sys.exit(main())
