"""Export a 2-D StarDist model folder as a bioimage.io model package (Keras HDF5 weights).

The package follows the layout of StarDist's own bioimage.io packages: one output tensor with the
object probability in channel 0 and the ``n_rays`` radial distances in channels 1.., brought up
from the network's ``grid`` to the input's size (each grid cell repeated, nearest neighbour), so
sampling every ``grid``-th pixel gives StarDist's own ``(prob, dist)``. Instances are StarDist's
post-processing (non-maximum suppression of the star-convex polygons at the thresholds), which is
not a bioimage.io operator: it is described in ``config.stardist`` (thresholds, the StarDist
config, the Keras weights file, as StarDist's packages keep them) and in the README, and the
package carries ``config.json``, ``thresholds.json`` and the weights as attachments, so the
folder is also a plain StarDist model folder. Preprocessing is ``scale_range`` at the card's
percentiles over the whole image; the input takes ``min + k * step`` pixels (``step`` = grid x
2**depth) and the output declares StarDist's tile overlap as ``halo``.

Runs in the TensorFlow worker (or a CLI process): TensorFlow is imported inside the functions.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ...core.progress import NULL_PROGRESS
from ...core.registry import CorruptModel, ModelCard
from .export import base_rdf, file_entry, finish, valid_crop

CITE = [{"text": "Schmidt, Weigert, Broaddus and Myers. Cell Detection with Star-Convex Polygons. MICCAI 2018.",
         "doi": "10.1007/978-3-030-00934-2_30"}]
WEIGHTS = "stardist_keras.h5"  # the whole network (inputs -> prob + dist at the input's size)
KERAS_WEIGHTS = "weights_best.h5"  # StarDist's own weights file (attachment; StarDist2D loads it)
HOW = ("Output channel 0 is the object probability, channels 1.. the radial distances (in pixels) of "
       "{n_rays} rays, repeated over each {gy}x{gx} grid cell. Instances: StarDist's non-maximum suppression "
       "of the star-convex polygons at one pixel of each {gy}x{gx} grid cell (probability threshold "
       "{prob}, overlap threshold {nms}; `config.stardist.thresholds`). With StarDist installed the folder "
       "also loads as a StarDist model (`StarDist2D(None, name, basedir)`: `config.json`, `thresholds.json`, "
       "`{weights}`).")


def full_size_network(sd):
    """The StarDist network with one output at the input's size: prob + dist, each grid cell repeated."""
    import keras

    n_ch = int(sd.config.n_channel_in)
    inp = keras.Input(shape=(None, None, n_ch), name="raw")
    prob, dist = sd.keras_model(inp)[:2]
    up = keras.layers.UpSampling2D(tuple(int(g) for g in sd.config.grid), interpolation="nearest")
    out = keras.layers.Concatenate(axis=-1, name="prob_dist")([up(prob), up(dist)])
    return keras.Model(inp, out, name="stardist_full_size")


def export_stardist(card: ModelCard, dest: str | Path, test_image: np.ndarray, license: str = "BSD-3-Clause",
                    authors: list[str] | None = None, progress=NULL_PROGRESS) -> Path:
    """Write ``card``'s 2-D StarDist model as a bioimage.io package folder ``dest``; a centred
    crop of ``test_image`` (raw intensities) becomes the test input. Returns ``dest``."""
    import tensorflow as tf

    from ...core.io import staged_dir
    from ...core.normalize import percentile_normalize, resolve_normalization
    from ..stardist.predict import load_model, thresholds_of

    if card.backend != "stardist2d" or not card.path or card.source == "pretrained":
        raise CorruptModel(f"model {card.name!r} ({card.backend}): only 2-D StarDist model folders can be exported "
                           "here")
    folder = Path(card.path)
    progress(0.05, f"loading {card.name}")
    sd = load_model(card)
    if getattr(sd.config, "n_classes", None):
        raise CorruptModel(f"model {card.name!r}: multi-class StarDist models cannot be exported")
    weights_file = folder / KERAS_WEIGHTS
    if not weights_file.is_file():
        raise CorruptModel(f"model {card.name!r}: no {KERAS_WEIGHTS} in {folder}")
    norm = resolve_normalization(card.normalization, None, None, f"model {card.name!r}")
    if norm["type"] != "percentile":
        raise CorruptModel(f"model {card.name!r}: only a percentile normalization can be exported")
    grid = [int(g) for g in sd.config.grid]
    n_rays, n_ch = int(sd.config.n_rays), int(sd.config.n_channel_in)
    div = [int(d) for d in sd._axes_div_by("YX")]
    step = max(div)
    halo = max(int(-(-int(v) // step) * step) for v in sd._axes_tile_overlap("YX"))
    lo = 2 * halo + step
    thr = {**{"prob": 0.5, "nms": 0.4}, **thresholds_of(card)}
    img = np.asarray(test_image, np.float32)
    img = img[..., None] if img.ndim == 2 else img
    if img.ndim != 3 or img.shape[-1] != n_ch:
        raise CorruptModel(f"the test image has shape {np.shape(test_image)}; {card.name!r} takes "
                           f"{n_ch} channel(s)")
    x = valid_crop(img, lo, step, lo, card.name)  # the smallest valid size: 33 output channels are large
    xn = percentile_normalize(x, norm["pmin"], norm["pmax"])
    progress(0.2, "building the full-size network")
    net = full_size_network(sd)
    y = np.asarray(net.predict(xn[None], verbose=0), np.float32)
    prob, dist = sd.keras_model.predict(xn[None], verbose=0)[:2]
    gy, gx = grid
    if not (np.allclose(y[0, ::gy, ::gx, :1], prob[0], atol=1e-5)
            and np.allclose(y[0, ::gy, ::gx, 1:], dist[0], atol=1e-4)):
        raise CorruptModel(f"model {card.name!r}: the full-size network differs from StarDist's own output")
    cfg = json.loads((folder / "config.json").read_text())
    how = HOW.format(n_rays=n_rays, gy=gy, gx=gx, prob=thr["prob"], nms=thr["nms"], weights=KERAS_WEIGHTS)
    import stardist

    space = {"min": lo, "step": step}
    in_names = ["raw"] if n_ch == 1 else [f"c{i}" for i in range(n_ch)]
    with staged_dir(Path(dest)) as tmp:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 calls HDF5 "legacy"; bioimage.io reads it as keras_hdf5
            net.save(str(tmp / WEIGHTS))
        shutil.copyfile(weights_file, tmp / KERAS_WEIGHTS)
        (tmp / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        (tmp / "thresholds.json").write_text(json.dumps({"prob": thr["prob"], "nms": thr["nms"]}), encoding="utf-8")
        np.save(tmp / "test_input.npy", x[None])
        np.save(tmp / "test_output.npy", y)
        rdf = base_rdf(card, tmp, how, CITE, ["stardist", "tensorflow", "instance-segmentation", "2d"],
                       license, authors)
        rdf.update({
            "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"id": "y", "type": "space", "size": space},
                                              {"id": "x", "type": "space", "size": space},
                                              {"type": "channel", "channel_names": in_names}],
                        "test_tensor": file_entry(tmp, "test_input.npy"),
                        "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                          {"id": "scale_range", "kwargs": {
                                              "axes": ["y", "x", "channel"], "min_percentile": norm["pmin"],
                                              "max_percentile": norm["pmax"]}}]}],
            "outputs": [{"id": "prob_dist",
                         "axes": [{"type": "batch"},
                                  *({"id": a, "type": "space", "halo": halo, "size": {"tensor_id": "raw", "axis_id": a}}
                                    for a in ("y", "x")),
                                  {"type": "channel",
                                   "channel_names": ["prob"] + [f"dist_{i}" for i in range(n_rays)]}],
                         "test_tensor": file_entry(tmp, "test_output.npy")}],
            "weights": {"keras_hdf5": {**file_entry(tmp, WEIGHTS), "tensorflow_version": tf.__version__}},
            "attachments": [file_entry(tmp, n) for n in ("config.json", "thresholds.json", KERAS_WEIGHTS)],
            "config": {"stardist": {"stardist_version": stardist.__version__, "thresholds": thr,
                                    "weights": KERAS_WEIGHTS, "config": cfg, "grid": grid},
                       "napari_cnnvision": {"thresholds": thr, "card": card.to_json()}},
        })
        progress(0.6, "validating the package and running its test tensors")
        finish(tmp, rdf, "keras_hdf5")
    return Path(dest)
