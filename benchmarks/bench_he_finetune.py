"""Few-shot domain transfer to H&E: fluorescence nuclei models fine-tuned on dsb2018_histo.

    python benchmarks/bench_he_finetune.py [--parts transfer curve loop ceiling] [--models nuclei-stardist nuclei-unet]
                                           [--curve-epochs N] [--curve-n 1 3 10 21] [--loop-rounds 3] [--val-limit N]
                                           [--minutes M] [--lr LR] [--settings JSON] [--no-before]

Everything runs through ``napari_cnnvision.api`` (``api.train`` with the Train widget's / the
``train`` command's defaults, derived from the annotations; ``api.segment``), i.e. the compute worker.
``--minutes`` (the widget's time budget), ``--lr`` and ``--settings`` (further trainer settings as
JSON, e.g. ``'{"steps_per_epoch": 50, "augment": {"flips": true, "colour": 0.1}}'``: the
``settings`` of ``api.train``) change the transfer part's fine-tunes, to measure candidate defaults;
``--no-before`` skips the "before" scores (printed once, they do not change).

* ``transfer``: for each base model, val AP@0.5 *before* (the base model on each val image's inverted
  luminance, ``backends.channels.inverted_luminance``: the plugin refuses RGB for a 1-channel model)
  and *after* (the model fine-tuned on the 21 RGB train images, its first convolution adapted to
  RGB, on the RGB val images as they are); the fine-tune's time, seconds per step and the load.
* ``curve``: sample efficiency: ``nuclei-stardist`` fine-tuned on 1, 3, 10 and 21 train images
  (evenly spread over the split; defaults, or ``--curve-epochs``).
* ``loop``: the correct-and-retrain loop: each round the current model segments 3 more train
  images, the result is replaced by the true masks (a user's corrections), and the model is
  fine-tuned from the current one on all corrected images so far; val AP@0.5 per round.
* ``ceiling`` (not run by default): the same fine-tune (defaults, or the transfer part's changes)
  on the train **and val** images together, scored on val: not a score (val is in its training
  data) but an upper bound of what the recipe can reach on these images, to tell the recipe's
  limit from the training data's.

Except in ``ceiling``, the validation split (52 images) is only scored, never trained or chosen on (each fine-tune holds
out part of its own training images, as the widget does). ``--val-limit`` scores the curve / loop
on that many val images (evenly spread) to save time; the output says so. Skips (exit 0) when the
shared data folder is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import cpu_times, steal_note  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018_histo"


def _load():
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def _spread(n_total: int, n: int) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)}) if n < n_total else list(range(n_total))


class Bench:
    def __init__(self, data: Path, user_dir: Path):
        from napari_cnnvision import api
        from napari_cnnvision.core.datasets import load_segmentation_split
        from napari_cnnvision.core.registry import ModelRegistry

        self.api = api
        self.train = load_segmentation_split(data, "train")
        self.val = load_segmentation_split(data, "val")
        self.registry = ModelRegistry(user_dir=user_dir)
        self.n_runs = 0

    def ap50(self, card, images, masks) -> float:
        from napari_cnnvision.backends.channels import inverted_luminance
        from napari_cnnvision.backends.evaluate import score_segmentations

        preds = []
        for x in images:
            inp = inverted_luminance(x) if card.channels == 1 and x.ndim == 3 else x
            preds.append(self.api.segment(inp, card).labels)
        return float(score_segmentations(list(masks), preds, (0.5,)).ap[0])

    def fine_tune(self, base, idx, epochs=None, masks=None, **overrides):
        """Fine-tune ``base`` (name or card) on the train images ``idx`` (their true masks, or
        ``masks``) with the defaults (``overrides``: further ``api.train`` arguments); returns
        (card, seconds, info)."""
        self.n_runs += 1
        name = f"he-bench-{self.n_runs}-{int(time.time())}"
        ims = [self.train.images[i] for i in idx]
        mks = list(masks) if masks is not None else [self.train.masks[i] for i in idx]
        base_card = base if not isinstance(base, str) else self.registry.get(base)
        t, cpu0 = time.perf_counter(), cpu_times()
        res = self.api.train("segment", ims, mks, base=base_card, name=name, epochs=epochs, registry=self.registry,
                             **overrides)
        dt = time.perf_counter() - t
        steal = steal_note(cpu0)
        card = self.registry.get(name)
        tr = card.training
        steps = int(tr.get("epochs_run", tr.get("epochs", 0))) * int(tr.get("steps_per_epoch", 0))
        train_s = float(tr.get("train_seconds", tr.get("seconds", dt)))
        s = tr.get("settings", {})
        info = {"steps": steps, "train_s": train_s, "s_per_step": train_s / max(steps, 1),
                "epochs": tr.get("epochs_run", tr.get("epochs")), "steps_per_epoch": tr.get("steps_per_epoch"),
                "batch": s.get("batch_size"), "patch": s.get("patch_size"), "lr": s.get("learning_rate"),
                "adaptation": (tr.get("channel_adaptation") or {}).get("method"), "result": res,
                "augment": s.get("augment"), "internal_val": (card.metrics.get("val") or {}).get("ap@0.5"), "steal": steal}
        return card, dt, info


def part_transfer(b: Bench, models, overrides=None, before_scores=True):
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    what = f"the defaults of the Train widget / CLI, changed: {overrides}" if overrides else \
        "defaults of the Train widget / CLI"
    print("== few-shot transfer to H&E (val: %d images; train: %d images, %s)" % (len(b.val), len(b.train), what),
          flush=True)
    out = {}
    for name in models:
        base = b.registry.get(name)
        before = float("nan")
        if before_scores:
            t = time.perf_counter()
            before = b.ap50(base, b.val.images, b.val.masks)
            tb = time.perf_counter() - t
            print(f"{name}: before (inverted luminance) val AP@0.5 {before:.3f}  ({tb:.0f} s to score; {_load()})",
                  flush=True)
        card, dt, info = b.fine_tune(base, list(range(len(b.train))), **overrides)
        after = b.ap50(card, b.val.images, b.val.masks)
        print(f"{name}: after  (fine-tuned, RGB)      val AP@0.5 {after:.3f}  gain {after - before:+.3f}", flush=True)
        print(f"  fine-tune: {info['epochs']} epochs x {info['steps_per_epoch']} steps, batch {info['batch']}, patch "
              f"{info['patch']}, lr {info['lr']}, augment {info['augment']}, first conv {info['adaptation']}; "
              f"{dt:.0f} s in all ({info['train_s']:.0f} s training, {info['s_per_step']:.2f} s/step); AP@0.5 on "
              f"the fine-tune's own held-out part {info['internal_val']}; {_load()}; {info['steal']}", flush=True)
        out[name] = (before, after)
    return out


def part_curve(b: Bench, epochs, val_idx, sizes=(1, 3, 10, 21)):
    vi, vm = [b.val.images[i] for i in val_idx], [b.val.masks[i] for i in val_idx]
    budget = f"{epochs} epochs" if epochs else "the defaults"
    print(f"== sample efficiency: nuclei-stardist fine-tuned on n train images ({budget}); val AP@0.5 on "
          f"{len(vi)} of {len(b.val)} val images", flush=True)
    base = b.registry.get("nuclei-stardist")
    print(f"  n= 0 (base, inverted luminance): {b.ap50(base, vi, vm):.3f}", flush=True)
    for n in sizes:
        card, dt, info = b.fine_tune(base, _spread(len(b.train), n), epochs=epochs)
        kept = "; no epoch beat the base on the fine-tune's held-out part: the base's weights kept" \
            if info["result"].kept_base else ""
        print(f"  n={n:2d}: {b.ap50(card, vi, vm):.3f}  ({info['epochs']} x {info['steps_per_epoch']} steps, "
              f"{dt:.0f} s; AP@0.5 on the fine-tune's held-out part {info['internal_val']}{kept}; {_load()})",
              flush=True)


def part_loop(b: Bench, rounds, epochs, val_idx):
    from napari_cnnvision.backends.channels import inverted_luminance
    from napari_cnnvision.backends.evaluate import score_segmentations

    vi, vm = [b.val.images[i] for i in val_idx], [b.val.masks[i] for i in val_idx]
    budget = f"{epochs} epochs" if epochs else "the defaults"
    print(f"== correct-and-retrain loop: 3 train images per round, nuclei-stardist first ({budget} per retrain); "
          f"val AP@0.5 on {len(vi)} of {len(b.val)} val images", flush=True)
    current = b.registry.get("nuclei-stardist")
    print(f"  round 0 (base): val {b.ap50(current, vi, vm):.3f}", flush=True)
    order = np.random.default_rng(0).permutation(len(b.train))
    done: list[int] = []
    for r in range(1, rounds + 1):
        new = [int(i) for i in order[3 * (r - 1):3 * r]]
        # the user segments the new images with the current model ...
        preds = [b.api.segment(inverted_luminance(b.train.images[i]) if current.channels == 1
                               else b.train.images[i], current).labels for i in new]
        fixed = score_segmentations([b.train.masks[i] for i in new], preds, (0.5,))
        # ... corrects the result layers (here: replaced by the true masks) and retrains from the current model
        done += new
        card, dt, info = b.fine_tune(current, done, epochs=epochs)
        current = card
        print(f"  round {r}: segmented 3 new images (their AP@0.5 before correction {fixed.ap[0]:.3f}: "
              f"{fixed.fp[0]} false and {fixed.fn[0]} missed objects corrected), retrained on {len(done)} images "
              f"in {dt:.0f} s -> val {b.ap50(card, vi, vm):.3f}"
              f"{' (the previous model kept: no epoch beat it on the held-out part)' if info['result'].kept_base else ''}",
              flush=True)


def part_ceiling(b: Bench, models, overrides=None):
    """The fine-tune on train + val, scored on val: the recipe's upper bound on these images."""
    from napari_cnnvision.core.datasets import SegmentationSplit

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    print(f"== ceiling: fine-tuned on the {len(b.train)} train + {len(b.val)} val images, scored on val (val in the "
          f"training data: an upper bound, not a score){'; changed: %s' % overrides if overrides else ''}", flush=True)
    train = b.train
    b.train = SegmentationSplit(ids=list(train.ids) + list(b.val.ids), images=list(train.images) + list(b.val.images),
                                masks=list(train.masks) + list(b.val.masks))
    try:
        for name in models:
            card, dt, info = b.fine_tune(b.registry.get(name), list(range(len(b.train))), **overrides)
            print(f"{name}: val AP@0.5 {b.ap50(card, b.val.images, b.val.masks):.3f} with val in the training data "
                  f"({info['epochs']} epochs x {info['steps_per_epoch']} steps, {info['train_s']:.0f} s training; "
                  f"its own held-out part {info['internal_val']}; {_load()})", flush=True)
    finally:
        b.train = train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--parts", nargs="+", default=["transfer", "curve", "loop"],
                   choices=["transfer", "curve", "loop", "ceiling"])
    p.add_argument("--models", nargs="+", default=["nuclei-stardist", "nuclei-unet"])
    p.add_argument("--curve-epochs", type=int, default=None, help="epochs of the curve / loop fine-tunes "
                                                                   "(default: the widget's defaults)")
    p.add_argument("--curve-n", type=int, nargs="+", default=[1, 3, 10, 21],
                   help="curve: the numbers of train images (default 1 3 10 21)")
    p.add_argument("--loop-rounds", type=int, default=3)
    p.add_argument("--val-limit", type=int, default=None, help="score the curve / loop on this many val images")
    p.add_argument("--minutes", type=float, default=None, help="transfer: a time budget instead of the epochs")
    p.add_argument("--lr", type=float, default=None, help="transfer: the learning rate")
    p.add_argument("--settings", default=None, help="transfer: further trainer settings (JSON)")
    p.add_argument("--no-before", action="store_true", help="transfer: skip the base models' scores")
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        print(f"skipped: no dataset at {a.data}")
        return 0
    t0 = time.time()
    print(f"bench_he_finetune: {os.cpu_count()} CPUs; {_load()} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="he-bench-") as tmp:
        b = Bench(Path(a.data), Path(tmp))
        val_idx = _spread(len(b.val), a.val_limit) if a.val_limit else list(range(len(b.val)))
        overrides = {"minutes": a.minutes, "learning_rate": a.lr,
                     "settings": json.loads(a.settings) if a.settings else None}
        if "transfer" in a.parts:
            part_transfer(b, a.models, overrides, before_scores=not a.no_before)
        if "curve" in a.parts:
            part_curve(b, a.curve_epochs, val_idx, a.curve_n)
        if "loop" in a.parts:
            part_loop(b, a.loop_rounds, a.curve_epochs, val_idx)
        if "ceiling" in a.parts:
            part_ceiling(b, a.models, overrides)
    print(f"done in {time.time() - t0:.0f} s; {_load()} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
