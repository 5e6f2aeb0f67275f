"""Jobs that check the worker plumbing (used by tests and benchmarks)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np


def echo(progress, **kwargs):
    """Return the arguments unchanged, plus a checksum of each array (proves the data arrived)."""
    sums = {k: float(np.asarray(v, dtype=np.float64).sum()) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    return {"args": kwargs, "sums": sums, "pid": os.getpid()}


def sleep(progress, seconds: float = 1.0, steps: int = 10):
    """Busy job that reports progress ``steps`` times and honours Stop."""
    for i in range(steps):
        progress.check()
        time.sleep(seconds / steps)
        progress((i + 1) / steps, f"step {i + 1}/{steps}")
    return {"pid": os.getpid(), "steps": steps}


def crash(progress, code: int = 3):
    os._exit(code)


def fail(progress, message: str = "boom"):
    raise ValueError(message)


def framework_info(progress, load: tuple = ()):
    """Import the given frameworks and report what is loaded in this process."""
    versions = {}
    for name in load:
        if name == "tf":
            import tensorflow as tf

            versions["tensorflow"] = tf.__version__
        elif name == "torch":
            import torch
            import torchvision

            versions["torch"] = torch.__version__
            versions["torchvision"] = torchvision.__version__
    loaded = sorted(m for m in ("tensorflow", "torch", "torchvision", "stardist") if m in sys.modules)
    return {"pid": os.getpid(), "versions": versions, "loaded": loaded}
