"""``napari-cnnvision train segment|detect|localize``: train or fine-tune a model on annotated
folders, in the compute worker, through the same backend as the Train widget
(:mod:`napari_cnnvision.backends.training.plan`) and :func:`napari_cnnvision.api.train`.

The new model is saved in the user model folder and is usable by name at once
(``napari-cnnvision segment --model NEW ...``). Ctrl-C once stops after the current epoch and
keeps the best model so far; twice ends at once (the run can be resumed with ``--resume``).
"""
from __future__ import annotations

import json
import signal
import sys
import time

from ..backends.training.plan import TASKS


def add_parser(sub):
    p = sub.add_parser("train", help="train or fine-tune a model on your annotated images",
                       description="Train (or fine-tune) a segmentation, detection or localization model on a "
                                   "folder of images and their annotations: label TIFFs of the same names "
                                   "(--masks) or a COCO / VOC / YOLO / boxes-CSV file or folder (--annotations). "
                                   "The model is saved in the user model folder under --name and can be used by "
                                   "that name at once. A name that exists already is refused.")
    p.add_argument("task", choices=TASKS, help="what the model does")
    p.add_argument("--base", default=None, metavar="MODEL",
                   help="the model to fine-tune (registry name or folder; default: a fresh network)")
    p.add_argument("--name", required=True, metavar="NEW", help="the new model's name")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder of training images")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--masks", default=None, metavar="DIR", help="label TIFFs named like the images")
    src.add_argument("--annotations", default=None, metavar="FILE_OR_DIR",
                     help="a COCO JSON, VOC XML folder, YOLO folder or boxes CSV")
    p.add_argument("--format", default=None, choices=("coco", "voc", "yolo", "csv"),
                   help="the annotations' format (default: recognized from the file)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="epochs (default: derived from the number of annotated objects)")
    budget.add_argument("--minutes", type=float, default=None, metavar="M",
                        help="a time budget: training stops when it is over and keeps the best model")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="the part held out for validation (default 0.2; not with --val-images)")
    p.add_argument("--val-images", default=None, metavar="DIR",
                   help="a folder of validation images (with --val-masks or --val-annotations): the validation "
                        "data, instead of holding out part of --images (every training image then trains)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-masks", default=None, metavar="DIR", help="label TIFFs named like the validation images")
    val.add_argument("--val-annotations", default=None, metavar="FILE_OR_DIR",
                     help="the validation images' COCO JSON, VOC XML folder, YOLO folder or boxes CSV")
    p.add_argument("--learning-rate", type=float, default=None, metavar="LR",
                   help="default: 1e-3 for a fresh U-Net, 3e-4 when fine-tuning (2e-3 / 6e-4 for detectors)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--patch-size", type=int, default=None, help="segmentation: the side of the training patches")
    p.add_argument("--upsampling", default=None, help="a fresh U-Net's upsampling (nearest, bilinear, transposed, "
                                                      "unpool, ...)")
    p.add_argument("--no-flips", action="store_true", help="no random mirror flips")
    p.add_argument("--no-turns", action="store_true", help="no random 90-degree turns")
    p.add_argument("--no-intensity", action="store_true", help="no random intensity jitter")
    p.add_argument("--scale", action="store_true", help="random zoom (scale augmentation)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a further trainer setting (VALUE as JSON, e.g. depth=2); repeatable")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run of --name")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--setting needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class _StopOnInterrupt:
    """The first Ctrl-C asks the training to stop after this epoch; a second one interrupts."""

    def __init__(self, progress, stream=sys.stderr):
        self.progress, self.stream, self.old, self.installed = progress, stream, None, False

    def __enter__(self):
        try:
            self.old = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, *_):
        if self.progress.stop_flag:
            raise KeyboardInterrupt
        self.progress.stop_flag = True
        self.stream.write("\nstopping after this epoch (the best model so far is kept); Ctrl-C again to quit\n")

    def __exit__(self, *exc):
        if self.installed:  # None: the former handler was not set from Python (e.g. by Qt); Python's own then
            signal.signal(signal.SIGINT, self.old if self.old is not None else signal.default_int_handler)
            self.installed = False
        return False


def run(args) -> int:
    from .. import api
    from ..core.axes import InputError
    from ..core.registry import ModelRegistry
    from .progress import TerminalProgress

    if args.masks is None and args.annotations is None:
        raise InputError("give the annotations: --masks DIR (label TIFFs) or --annotations FILE_OR_DIR")
    if args.format is not None and args.annotations is None:
        raise InputError("--format goes with --annotations, not with --masks")
    val_ann = args.val_masks if args.val_masks is not None else args.val_annotations
    if (args.val_images is None) != (val_ann is None):
        raise InputError("give the validation images and their annotations together: --val-images DIR with "
                         "--val-masks DIR or --val-annotations FILE_OR_DIR")
    if args.val_images is not None and args.val_fraction is not None:
        raise InputError("--val-fraction holds out part of --images; with --val-images the validation data is "
                         "given: leave out one of them")
    registry = ModelRegistry()
    bar = TerminalProgress(f"training {args.name}", enabled=not args.quiet and sys.stderr.isatty())
    bar.stop_flag = False  # set by the first Ctrl-C
    plain = not args.quiet and not sys.stderr.isatty()

    t0 = time.monotonic()

    def report(frac, message="", **metrics):
        if frac and 0 < frac < 1 and message.startswith("epoch"):
            message += f" · ETA {_fmt_time((time.monotonic() - t0) * (1 - frac) / frac)}"
        bar(frac, message, **metrics)
        if plain and "epoch" in metrics:  # no terminal: one line per epoch
            print(_epoch_line(metrics), file=sys.stderr, flush=True)

    class _Sink:  # api.train's progress: events to the bar, the stop flag from Ctrl-C
        def __call__(self, *a, **k):
            report(*a, **k)

        @property
        def stop_requested(self):
            return bar.stop_flag

    try:
        with _StopOnInterrupt(bar):
            res = api.train(args.task, args.images, args.masks if args.masks is not None else args.annotations,
                            base=args.base, name=args.name, epochs=args.epochs, minutes=args.minutes,
                            val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
                            val_images=args.val_images, val_annotations=val_ann,
                            val_format="masks" if args.val_masks is not None else None,
                            learning_rate=args.learning_rate,
                            batch_size=args.batch_size, patch_size=args.patch_size, flips=not args.no_flips,
                            turns=not args.no_turns, intensity=not args.no_intensity, scale=args.scale,
                            upsampling=args.upsampling, format=args.format if args.annotations else "masks",
                            resume=args.resume, settings=parse_settings(args.setting), progress=_Sink(),
                            registry=registry)
    finally:
        bar.close()
    if args.json:
        print(json.dumps({"name": res.name, "task": res.task, "model_dir": res.model_dir, "epochs_run": res.epochs_run,
                          "best_epoch": res.best_epoch, "stopped": res.stopped, "seconds": res.seconds,
                          "val": res.metrics}, indent=1))
        return 0
    print(res.describe())
    shown = ", ".join(f"{k} {v:.4g}" for k, v in res.metrics.items())
    if shown:
        print(f"validation: {shown}")
    print(f"use it: napari-cnnvision {res.task} --model {res.name} ...")
    return 0


def _fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _epoch_line(m: dict) -> str:
    parts = [f"epoch {m['epoch']}"]
    for k in ("loss", "train_loss", "val_loss", "val_ap50", "val_map", "val_accuracy"):
        if k in m and isinstance(m[k], (int, float)):
            parts.append(f"{k} {m[k]:.4f}")
    return " · ".join(parts)
