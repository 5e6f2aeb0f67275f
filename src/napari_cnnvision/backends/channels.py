"""Channel adaptation of a network's first convolution (pure numpy, framework-neutral).

A base model trained on 1-channel images (fluorescence nuclei) fine-tuned on RGB images (H&E),
or the reverse, needs a first convolution with another number of input channels. Only that
kernel changes; every later weight is kept.

* **1 -> 3** (``"inverted_luminance"``): ``kernel_c = -w_c * kernel`` with the luminance weights
  ``w = (0.299, 0.587, 0.114)`` (ITU-R BT.601; they sum to 1), and the bias grows by the kernel's
  sum per output filter. On a normalized RGB input ``x`` the adapted layer then computes the base
  layer on ``1 - sum_c w_c x_c``, the inverted luminance: stained nuclei (dark in H&E) become
  bright, as in fluorescence. Fine-tuning so starts from the base model's "inverted luminance"
  baseline (exactly, except within the kernel's reach of the image edge, where the zero padding
  meets the constant 1). ``"mean"`` instead gives every channel ``kernel / n`` (a grey image
  repeated in every channel gives the base output), for data whose channels are not a stain.
* **1 -> n** (n != 3): ``"mean"``.
* **n -> 1** (``"sum"``): ``kernel = sum_c kernel_c``: a grey image gives what the base model
  gives on that image repeated in all its channels.

Kernels are given with the axis of their input channels (``in_axis``) and of their output
filters (``out_axis``): Keras ``(kh, kw, in, out)`` -> ``in_axis=2, out_axis=3``; PyTorch
``(out, in, kh, kw)`` -> ``in_axis=1, out_axis=0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.axes import InputError

#: ITU-R BT.601 luminance weights of R, G, B
LUMINANCE = (0.299, 0.587, 0.114)
METHODS = ("inverted_luminance", "mean", "sum")


@dataclass
class KernelAdaptation:
    kernel: np.ndarray
    #: add to the layer's bias (or, when the layer has none and a batch norm follows, subtract from
    #: that norm's running mean) so that the adapted layer computes the base one
    bias_shift: np.ndarray
    method: str
    from_channels: int
    to_channels: int

    def record(self, layer: str = "") -> dict:
        """What the model card says about the adaptation."""
        how = {"inverted_luminance": "kernel_c = -w_c * kernel, w = (0.299, 0.587, 0.114) (BT.601 luminance), bias "
                                     "+= sum(kernel): the base network on the inverted luminance of the normalized "
                                     "RGB input",
               "mean": "kernel_c = kernel / n: the base network on the channels' mean",
               "sum": "kernel = sum over the base model's channels: the base network on the image repeated in "
                      "every channel"}[self.method]
        out = {"from_channels": self.from_channels, "to_channels": self.to_channels, "method": self.method,
               "how": how}
        if layer:
            out["layer"] = layer
        return out


def default_method(from_channels: int, to_channels: int) -> str:
    if from_channels == 1 and to_channels == 3:
        return "inverted_luminance"
    if from_channels == 1:
        return "mean"
    if to_channels == 1:
        return "sum"
    raise InputError(f"cannot adapt a model for {from_channels} channels to {to_channels}-channel images; "
                     "only 1 -> n and n -> 1 are supported (convert the images first)")


def adapt_kernel(kernel, to_channels: int, in_axis: int, out_axis: int, method: str | None = None) -> KernelAdaptation:
    """The first convolution's ``kernel`` changed to take ``to_channels`` input channels."""
    k = np.asarray(kernel)
    if k.ndim < 3:
        raise ValueError(f"a convolution kernel has at least 3 axes, got shape {k.shape}")
    in_axis, out_axis = in_axis % k.ndim, out_axis % k.ndim
    if in_axis == out_axis:
        raise ValueError("in_axis and out_axis must differ")
    n_from, n_to = int(k.shape[in_axis]), int(to_channels)
    if n_to < 1:
        raise InputError(f"the images must have at least one channel, got {to_channels}")
    method = method or default_method(n_from, n_to)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_filters = k.shape[out_axis]
    zero = np.zeros(n_filters, np.float64)
    kd = k.astype(np.float64)
    if method == "sum":
        if n_to != 1:
            raise InputError(f"'sum' adapts to 1 channel, not {n_to}")
        new = kd.sum(axis=in_axis, keepdims=True)
        shift = zero
    else:
        if n_from != 1:
            raise InputError(f"{method!r} adapts a 1-channel kernel, this one takes {n_from}")
        if method == "inverted_luminance":
            if n_to != 3:
                raise InputError(f"'inverted_luminance' adapts to 3 (RGB) channels, not {n_to}")
            w = np.asarray(LUMINANCE, np.float64)
        else:
            w = np.full(n_to, 1.0 / n_to)
        shape = [1] * k.ndim
        shape[in_axis] = n_to
        sign = -1.0 if method == "inverted_luminance" else 1.0
        new = sign * kd * w.reshape(shape)  # broadcast the 1-channel axis to n_to
        other = tuple(a for a in range(k.ndim) if a != out_axis)
        shift = kd.sum(axis=other) if method == "inverted_luminance" else zero
    return KernelAdaptation(new.astype(k.dtype), shift.astype(k.dtype), method, n_from, n_to)


def inverted_luminance(image: np.ndarray) -> np.ndarray:
    """The inverted luminance ``max - (0.299 R + 0.587 G + 0.114 B)`` of an RGB(A) image (YXC) as
    float32, ``max`` being 255 for 8-bit images, else the image's maximum: the 1-channel image a
    fluorescence model is run on for the "before" baseline."""
    x = np.asarray(image)
    if x.ndim < 3 or x.shape[-1] not in (3, 4):
        raise InputError(f"an RGB image (..., 3) is needed, got shape {x.shape}")
    lum = x[..., :3].astype(np.float32) @ np.asarray(LUMINANCE, np.float32)
    top = 255.0 if x.dtype == np.uint8 else float(lum.max())
    return (top - lum).astype(np.float32)


def adapt_state(state: dict, to_channels: int, weight_key: str, bias_key: str | None = None,
                norm_mean_key: str | None = None, method: str | None = None) -> tuple[dict, dict]:
    """A PyTorch-layout state (name -> numpy array; kernels ``(out, in, kh, kw)``) with the first
    convolution ``weight_key`` adapted to ``to_channels``. The bias shift goes to ``bias_key``, or,
    for a convolution without bias followed by a batch norm, is subtracted from that norm's
    running mean (``norm_mean_key``): in eval mode the adapted network then computes the base one.
    Returns (new state, the card's record)."""
    if weight_key not in state:
        raise ValueError(f"no weight {weight_key!r} in the state")
    a = adapt_kernel(state[weight_key], to_channels, in_axis=1, out_axis=0, method=method)
    out = dict(state)
    out[weight_key] = a.kernel
    if np.any(a.bias_shift):
        if bias_key is not None and bias_key in state:
            out[bias_key] = (np.asarray(state[bias_key]) + a.bias_shift).astype(np.asarray(state[bias_key]).dtype)
        elif norm_mean_key is not None and norm_mean_key in state:
            m = np.asarray(state[norm_mean_key])
            out[norm_mean_key] = (m - a.bias_shift).astype(m.dtype)
        else:
            raise ValueError(f"the convolution {weight_key!r} has no bias and no batch norm named to take the shift")
    return out, a.record(layer=weight_key.rsplit(".", 1)[0])
