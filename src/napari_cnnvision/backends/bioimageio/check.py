"""Check a bioimage.io package here, as bioimage.io's own test does: run its test input tensor
through its pre-processing, weights and post-processing, and compare the result with its test
output tensor within the package's reproducibility tolerance. One result per weights format
that the package has as a file; weights given as URLs are skipped (nothing is downloaded)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ...core.registry import CorruptModel
from .package import RUNNABLE, TF_RUNNABLE, _local_file, load_package, mapping, weight_formats


@dataclass
class CheckResult:
    weights: str
    passed: bool
    message: str
    max_abs_diff: float | None = None
    mismatched_per_million: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _tolerance(descr) -> tuple[float, float, float]:
    tols = getattr(getattr(getattr(descr, "config", None), "bioimageio", None), "reproducibility_tolerance", ())
    for t in tols or ():
        return float(t.relative_tolerance), float(t.absolute_tolerance), float(t.mismatched_elements_per_million)
    return 1e-3, 1e-3, 100.0  # bioimageio.spec's defaults


def _load_npy(descr, tensor, where: str) -> np.ndarray:
    src = getattr(getattr(tensor, "test_tensor", None), "source", None)
    if src is None:
        raise CorruptModel(f"{where}: tensor {tensor.id} has no test tensor")
    file, name = _local_file(descr.root, src)
    if file is None or not file.is_file():
        raise CorruptModel(f"{where}: the test tensor {name} is not a file in the package")
    import io

    with file.open("rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def _chw(arr: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    """An array in ``axes`` order -> ``(C, H, W)`` (batch 0)."""
    dims = list(axes)
    if "batch" in dims:
        arr = np.take(arr, 0, axis=dims.index("batch"))
        dims.remove("batch")
    if "channel" not in dims:
        arr, dims = arr[None], ["channel"] + dims
    return np.transpose(arr, [dims.index(a) for a in ("channel", "y", "x")])


def check_formats(descr) -> list[str]:
    """The formats a check runs by default: the PyTorch / ONNX ones the package has, or else its
    Keras ones (one process never runs both frameworks)."""
    have = weight_formats(descr)
    return [f for f in RUNNABLE if f in have] or [f for f in TF_RUNNABLE if f in have]


def check_package(path, weights: str | None = None) -> list[CheckResult]:
    """Run the package's test tensors with each of its runnable weights formats (or ``weights``)."""
    from .predict import load_pipeline, predict_maps

    where = str(path)
    descr, _ = load_package(path)
    m = mapping(descr, where, roles=False)
    x = _chw(_load_npy(descr, descr.inputs[0], where), m.input_axes).astype(np.float32)
    want = _chw(_load_npy(descr, descr.outputs[0], where), m.output_axes).astype(np.float32)
    rtol, atol, per_million = _tolerance(descr)
    formats = [weights] if weights else check_formats(descr)
    results = []
    for fmt in formats:
        entry = getattr(descr.weights, fmt, None)
        if entry is not None and weights is None and _local_file(descr.root, entry.source)[0] is None:
            continue  # a URL: skipped, as nothing is downloaded
        try:
            _, m2, _, pipe, adapter, _ = load_pipeline(str(path), fmt, roles=False)
            got = predict_maps(pipe, adapter, m2, x, tile_size=None, n_tiles=None, context=False)
        except Exception as exc:  # noqa: BLE001 -- reported as a failed check
            results.append(CheckResult(fmt, False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        if got.shape != want.shape:
            results.append(CheckResult(fmt, False, f"output shape {got.shape} differs from the test output "
                                                   f"{want.shape}"))
            continue
        diff = np.abs(got - want)
        bad = float(np.count_nonzero(diff > atol + rtol * np.abs(want))) * 1e6 / max(1, want.size)
        ok = bad <= per_million
        msg = (f"test output reproduced (max abs difference {diff.max():.2g})" if ok else
               f"{bad:.0f} mismatched elements per million (tolerance {per_million:g}; max abs difference "
               f"{diff.max():.2g})")
        results.append(CheckResult(fmt, ok, msg, float(diff.max()), bad))
    if not results:
        raise CorruptModel(f"{where}: no weights inside the package can be run here "
                           f"(it has {', '.join(weight_formats(descr))})")
    return results
