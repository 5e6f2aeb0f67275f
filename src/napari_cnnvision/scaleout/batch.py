"""``run_batch``: one Dask task per image, outputs written here as the tasks finish."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BatchSummary:
    task: str
    model: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (image, message)

    def line(self) -> str:
        from .outputs import KINDS

        return (f"{KINDS[self.task].verb} {self.done}, skipped {self.skipped} (already done), "
                f"failed {self.failed}; model {self.model}")


def _message(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def run_batch(task: str, files, out_dir, model=None, *, workers: int | None = None, scheduler: str | None = None,
              overwrite: bool = False, formats=None, quiet: bool = False, debug: bool = False, registry=None,
              stream=None, **task_kwargs) -> BatchSummary:
    """Run ``task`` ("segment", "detect" or "localize") on image ``files`` (files or folders) on a
    Dask cluster and write a file per image into ``out_dir`` as in the plain command.

    ``workers=N``: a LocalCluster of N processes (1 Dask thread each) started and closed here;
    ``scheduler=ADDRESS``: an existing cluster (its address or scheduler file) whose workers offer
    the resource of the model's framework (``torch=1`` or ``tf=1``). ``task_kwargs`` go to the
    :mod:`~napari_cnnvision.api` function (``axes``, thresholds, ``n_tiles``, ``tta``, ...).
    Images whose outputs exist are skipped (``overwrite`` redoes them); an image that fails is
    listed in ``out_dir/errors.csv`` and the batch goes on; a worker that dies costs a retry of
    its tasks on another worker (Dask reschedules them; an image that kills
    ``distributed.scheduler.allowed-failures`` workers is reported as failed).
    """
    from ..backends.dispatch import card_payload, job_for
    from ..cli.progress import TerminalProgress
    from ..core.images import expand_inputs
    from ..core.registry import ModelCard, ModelRegistry
    from ..worker.jobs import framework_of
    from .cluster import connect, resources_for
    from .outputs import KINDS, ErrorTable
    from .tasks import compute

    if task not in KINDS:
        raise ValueError(f"unknown batch task {task!r} (one of {', '.join(KINDS)})")
    stream = stream or sys.stderr
    registry = registry or ModelRegistry()
    card = model if isinstance(model, ModelCard) else (registry.get(model) if model else registry.default(task))
    job = job_for(card, task=task)  # a model of another task is refused before the batch
    files = expand_inputs([files] if isinstance(files, (str, Path)) else files)
    if not files:
        raise ValueError("no input images found")
    out = Path(out_dir)
    sink = KINDS[task](files, out, card, overwrite=overwrite, formats=formats)  # refusals before anything runs
    errors = ErrorTable(out, sink.outputs())
    summary = BatchSummary(task, card.name, skipped=len(files) - len(sink.pending))
    payload = card_payload(card)
    if payload.get("path"):
        payload["path"] = str(Path(payload["path"]).resolve())  # workers may run in another folder
    try:
        if sink.pending:
            with connect(workers, scheduler, framework_of(job), stream, warm=(task, payload)) as client:
                _run(client, compute, task, files, sink, errors, summary, payload, task_kwargs,
                     resources_for(framework_of(job)), TerminalProgress(f"{task}", stream, enabled=not quiet),
                     quiet, debug, stream)
    finally:  # also after Ctrl-C: what is done is kept
        sink.finish()
        errors.finish()
    print(summary.line())
    return summary


def _run(client, compute, task, files, sink, errors, summary, payload, kwargs, resources, bar, quiet, debug, stream):
    from distributed import as_completed

    from uuid import uuid4

    paths = [str(files[i].resolve()) for i in sink.pending]
    token = uuid4().hex[:8]  # two batches on one scheduler never share a key
    futures = client.map(compute, [task] * len(paths), paths, [payload] * len(paths), [kwargs] * len(paths),
                         pure=False, resources=resources or None, key=[f"{task}-{files[i].name}-{token}-{i}" for i in sink.pending])
    index = {f.key: i for f, i in zip(futures, sink.pending)}
    n = len(futures)
    bar(0.0, f"0/{n}")
    t0 = time.perf_counter()
    try:
        for fut in as_completed(futures):
            if fut is not None and summary.done + summary.failed == 0:
                print(f"\rdask: first image done {time.perf_counter() - t0:.1f} s after submitting "
                      "(the workers load the model once)".ljust(100), file=stream)
            i = index[fut.key]
            try:
                res = fut.result()
                msg = sink.write(i, res)
            except Exception as exc:  # this image fails; the batch goes on
                if debug:
                    import traceback

                    traceback.print_exc()
                summary.failed += 1
                summary.errors.append((str(files[i]), _message(exc)))
                errors.add(files[i], _message(exc))
                print(f"\rnapari-cnnvision: {files[i]}: {_message(exc)}".ljust(120), file=stream)
            else:
                summary.done += 1
                for w in getattr(res, "warnings", ()):
                    print(f"\rnapari-cnnvision: {files[i].name}: warning: {w}".ljust(120), file=stream)
                if debug and not quiet:
                    print(f"\r{files[i].name}: {msg}".ljust(120), file=stream)
            fut.release()
            k = summary.done + summary.failed
            bar(k / n, f"{k}/{n} images, {summary.failed} failed")
    finally:
        client.cancel([f for f in futures if not f.done()])
        bar.close()
        k = summary.done + summary.failed
        if k > 1:
            print(f"dask: {k} images in {time.perf_counter() - t0:.1f} s after submitting", file=stream)
