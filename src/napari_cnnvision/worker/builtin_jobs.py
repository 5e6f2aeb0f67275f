"""Jobs that check the worker plumbing (used by tests and benchmarks)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np


def echo(progress, **kwargs):
    """Return the arguments unchanged, plus a checksum of each array (proves the data arrived)."""
    sums = {k: float(np.asarray(v, dtype=np.float64).sum()) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    progress(1.0, "echoed")
    return {"args": kwargs, "sums": sums, "pid": os.getpid()}


def sleep(progress, seconds: float = 1.0, steps: int = 10):
    """Busy job that reports progress ``steps`` times and honours Stop."""
    for i in range(steps):
        progress.check()
        time.sleep(seconds / steps)
        progress((i + 1) / steps, f"step {i + 1}/{steps}")
    return {"pid": os.getpid(), "steps": steps}


def toy_train(progress, epochs: int = 10, steps: int = 1, seconds: float = 0.0, weights_size: int = 16):
    """Behaves like a trainer: ``steps`` plain bar updates per epoch, one event with metrics per
    epoch, and on Stop it ends early and returns the model it has (its weights hold the number
    of epochs done)."""
    done, pause = 0, seconds / max(1, epochs * steps)
    for epoch in range(1, epochs + 1):
        for step in range(steps):
            time.sleep(pause)
            progress((epoch - 1 + (step + 1) / steps) / epochs, f"epoch {epoch} step {step + 1}/{steps}")
        done = epoch
        progress(epoch / epochs, f"epoch {epoch}/{epochs}", epoch=epoch, loss=1.0 / epoch)
        if progress.stop_requested:
            break
    return {"pid": os.getpid(), "epochs": done, "stopped": done < epochs,
            "weights": np.full(weights_size, done, np.float32)}


class _ExitWhenPickled:
    def __init__(self, code: int):
        self.code = code

    def __reduce__(self):
        os._exit(self.code)


def crash(progress, code: int = 3, while_sending: bool = False):
    """End the process with exit status ``code``: at once, or while sending a result whose first
    array already went to shared memory."""
    if not while_sending:
        os._exit(code)
    return {"image": np.ones((256, 256), np.float32), "crash": _ExitWhenPickled(code)}


def _error_class(kind: str):
    if kind == "InputError":
        from ..core.axes import InputError

        return InputError
    if kind in ("ModelNotFound", "CorruptModel"):
        from ..core import registry

        return getattr(registry, kind)
    if kind == "ModelUnavailable":
        from ..core.registry import ModelUnavailable

        return ModelUnavailable
    return {"ValueError": ValueError, "RuntimeError": RuntimeError}[kind]


def fail(progress, message: str = "boom", kind: str = "ValueError"):
    """Raise ``kind`` (a few known exception classes, user errors among them) with ``message``."""
    raise _error_class(kind)(message)


def framework_info(progress, load: tuple = ()):
    """Import the given frameworks and report what is loaded in this process (and which GPUs it may use)."""
    versions, gpus = {}, {}
    for name in load:
        if name == "tf":
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
            gpus["tf"] = len(tf.config.list_physical_devices("GPU"))
        elif name == "torch":
            import torch
            import torchvision

            versions["torch"] = torch.__version__
            versions["torchvision"] = torchvision.__version__
            gpus["torch"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    loaded = sorted(m for m in ("tensorflow", "torch", "torchvision", "stardist") if m in sys.modules)
    return {"pid": os.getpid(), "versions": versions, "loaded": loaded, "gpus": gpus,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
