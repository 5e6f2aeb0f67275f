"""Pieces of StarDist fine-tuning: the base model (its architecture and weights, the first
convolution adapted to the data's channels), the validation scores and the model card.

TensorFlow / StarDist are imported inside the functions (they run in the compute worker).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.axes import InputError

#: the network's fields of a StarDist ``Config2D``: a fine-tuned model keeps its base model's
ARCH_KEYS = ("n_rays", "grid", "backbone", "unet_n_depth", "unet_kernel_size", "unet_n_filter_base",
             "unet_n_conv_per_depth", "unet_pool", "unet_activation", "unet_last_activation", "unet_batch_norm",
             "unet_dropout", "unet_expansion", "unet_prefix", "net_conv_after_unet")


@dataclass
class BaseModel:
    name: str
    folder: str
    model: object  # the loaded StarDist2D
    channels: int
    arch: dict  # ARCH_KEYS of its config
    thresholds: dict  # prob, nms


def resolve_base(init_folder) -> tuple[str, str | None, object | None]:
    """(name, folder or None, card or None) of a base given as a folder path or a card payload."""
    if isinstance(init_folder, dict):
        from ..dispatch import card_from_payload

        card = card_from_payload(init_folder)
        if not card.backend.startswith("stardist"):
            raise InputError(f"model {card.name!r} is a {card.backend} model; a StarDist model is needed here")
        return card.name, card.path, card
    folder = Path(init_folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} is not a StarDist model folder (no config.json)")
    return folder.name, str(folder), None


def load_base(init_folder) -> BaseModel:
    """The StarDist 2D model to fine-tune (a folder, or a card payload: shipped, user or pretrained)."""
    import warnings

    from stardist.models import StarDist2D

    name, folder, card = resolve_base(init_folder)
    if card is not None and card.backend != "stardist2d":
        raise InputError(f"model {name!r} is a {card.backend} model; only 2D StarDist models are fine-tuned")
    if folder is None:  # a pretrained model: stardist's download + cache
        from .predict import load_pretrained

        model = load_pretrained(name, StarDist2D)
        folder = str(model.logdir)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = StarDist2D(None, name=Path(folder).name, basedir=str(Path(folder).parent))
        except Exception as exc:
            raise InputError(f"cannot load the StarDist model in {folder}: {exc}") from exc
    cfg = vars(model.config)
    if int(cfg.get("n_dim", 2)) != 2:
        raise InputError(f"model {name!r} is not a 2D StarDist model")
    if cfg.get("n_classes"):
        raise InputError(f"model {name!r} classifies its objects; fine-tuning supports single-class models only")
    arch = {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]) for k in ARCH_KEYS if k in cfg}
    thr = model.thresholds
    return BaseModel(name, folder, model, int(cfg.get("n_channel_in", 1)), arch,
                     {"prob": float(thr.prob), "nms": float(thr.nms)})


def transfer_weights(base: BaseModel, keras_model, n_channels: int) -> dict | None:
    """Copy the base model's weights into ``keras_model`` (same architecture); the first
    convolution is adapted when the channels differ. Returns the card's record of the adaptation."""
    from ..channels import adapt_kernel

    ws = base.model.keras_model.get_weights()
    own = keras_model.get_weights()
    if len(ws) != len(own):
        raise InputError(f"the base model {base.name!r} has another architecture ({len(ws)} weight arrays, "
                         f"the new network {len(own)})")
    record = None
    if n_channels != base.channels:
        first = next(layer for layer in keras_model.layers if layer.weights)
        a = adapt_kernel(ws[0], n_channels, in_axis=2, out_axis=3)
        ws[0], ws[1] = a.kernel, (ws[1] + a.bias_shift).astype(ws[1].dtype)
        record = a.record(layer=first.name)
    bad = [(i, w.shape, o.shape) for i, (w, o) in enumerate(zip(ws, own)) if w.shape != o.shape]
    if bad:
        raise InputError(f"the base model {base.name!r} does not fit the new network: weight {bad[0][0]} has "
                         f"shape {bad[0][1]}, the network's {bad[0][2]}")
    keras_model.set_weights(ws)
    return record


def val_labels(model, raw, shapes, prob: float, nms: float) -> list[np.ndarray]:
    """Instances of the network outputs ``raw`` (the plugin's post-processing: no border exclusion)."""
    return [model._instances_from_prediction(shape, p, d, prob_thresh=prob, nms_thresh=nms, b=0)[0].astype(np.int32)
            for shape, (p, d) in zip(shapes, raw)]


def network_outputs(model, normalized_images) -> list:
    """(prob, dist) of each (already normalized) image."""
    from .predict import network_output

    return [network_output(model, x, "YX" if x.ndim == 2 else "YXC") for x in normalized_images]


def ap50(model, normalized_images, masks, prob: float, nms: float) -> float:
    from ..evaluate import score_segmentations

    raw = network_outputs(model, normalized_images)
    labels = val_labels(model, raw, [m.shape for m in masks], prob, nms)
    return float(score_segmentations(masks, labels, (0.5,)).ap[0])


def hardware() -> str:
    """What the training ran on, for the card (TensorFlow's devices)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    gpus = []
    try:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
    except Exception:  # noqa: BLE001  (only a description)
        pass
    return f"{len(gpus)} GPU(s) (TensorFlow)" if gpus else f"{n} CPU cores (TensorFlow)"


def data_summary(images, masks, val_images, val_masks) -> str:
    def n_obj(ms):
        return sum(int(np.count_nonzero(np.unique(m))) for m in ms)

    def px(ims):
        return sum(int(np.prod(im.shape[:2])) for im in ims)

    return (f"{len(images)} training image(s) ({px(images)} px, {n_obj(masks)} objects), "
            f"{len(val_images)} validation image(s) ({px(val_images)} px, {n_obj(val_masks)} objects)")


def build_card(name: str, n_channels: int, settings, *, base: BaseModel | None, adaptation: dict | None,
               data, command, history: dict, seconds: float, epochs_run: int, stopped: bool, thresholds: dict,
               metrics: dict, weights: str, init_weights: str | None, summary: str):
    from ...core.registry import ModelCard

    training = {
        "data": data or summary,
        "data_summary": summary,
        "command": command or "napari_cnnvision.backends.stardist.train.train_job",
        "base_model": base.name if base is not None else None,
        "init_folder": base.folder if base is not None else None,
        "init_weights": init_weights,
        "channel_adaptation": adaptation,
        "epochs_run": epochs_run, "steps_per_epoch": settings.steps_per_epoch, "batch_size": settings.batch_size,
        "stopped_early": stopped, "time_budget_s": settings.time_budget,
        "seconds": round(float(seconds), 1), "hardware": hardware(), "weights": weights,
        "thresholds": thresholds, "settings": settings.to_dict(), "history": history,
    }
    desc = (f"StarDist 2D model fine-tuned from {base.name}" if base is not None else "StarDist 2D model") + \
           f" on {n_channels}-channel images"
    return ModelCard(name=name, task="segment", backend="stardist2d", classes=["nucleus"],
                     axes="YX" if n_channels == 1 else "YXC", channels=n_channels,
                     normalization={"type": "percentile", "pmin": float(settings.pmin), "pmax": float(settings.pmax)},
                     description=desc, training=training, metrics=metrics)


#: the weights a fine-tune starts from (the base's, its first convolution adapted), kept as the last
#: candidate: a fine-tune that does not beat its base on the validation part hands back the base
START_WEIGHTS = "weights_start.h5"

#: weights files of a finished run that compete on val AP@0.5 for the final model (ties: the first)
CANDIDATES = ("weights_best.h5", "weights_ap.h5", "weights_last.h5", START_WEIGHTS)


#: the threshold search of a finished run (``thresholds.optimize_thresholds``): NMS 0.3 / 0.4 (touching
#: nuclei), probability 0.3..0.8 in steps of 0.1, then of 0.025 around the best
THRESHOLD_SEARCH = {"nms_threshs": (0.3, 0.4), "prob_coarse": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8), "fine_step": 0.025}


def choose_weights(model, folder: Path, Xv, Yv, optimize: bool, thresholds: dict, progress,
                    threshold_images: int | None = None):
    """The candidate weights with the highest val AP@0.5 at ``thresholds`` (the base model's or
    the defaults), then, when ``optimize``, the thresholds re-optimized for those weights;
    returns (file name, thresholds with "ap"). ``threshold_images``: search the thresholds on at most
    this many of the validation images (evenly spread), for large validation sets."""
    from .thresholds import optimize_thresholds as optimize_for_plugin

    scored = []
    for cand in [c for c in CANDIDATES if (folder / c).is_file()]:  # also after a stop request: no check()
        model.keras_model.load_weights(str(folder / cand))
        progress(None, f"scoring {cand} on the validation images")
        scored.append((ap50(model, Xv, Yv, thresholds["prob"], thresholds["nms"]), -len(scored), cand))
    ap, _, chosen = max(scored)
    thr = {**thresholds, "ap": ap}
    if optimize:
        model.keras_model.load_weights(str(folder / chosen))
        progress(None, f"optimizing thresholds on the validation images ({chosen})")
        idx = np.arange(len(Xv))
        if threshold_images and len(Xv) > threshold_images:
            idx = np.unique(np.linspace(0, len(Xv) - 1, threshold_images).round().astype(int))
        best = optimize_for_plugin(model, [Xv[i] for i in idx], [Yv[i] for i in idx],
                                   normalization={"type": "scale", "factor": 1.0}, **THRESHOLD_SEARCH)
        if len(idx) < len(Xv):
            best["ap"] = ap50(model, Xv, Yv, best["prob"], best["nms"])  # on all of them, to compare
        if best["ap"] >= ap:
            thr = best
    return chosen, thr
