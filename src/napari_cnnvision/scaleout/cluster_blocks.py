"""``segment --blocks N`` with ``--workers`` / ``--scheduler``: each window of a block-wise image is a
Dask task; the command stitches them as they come back, in order.

The command opens the image lazily, takes the whole image's normalization from it
(:func:`.blockwise.global_normalization`) and submits its windows (:func:`.blockwise.windows`),
a few per worker ahead of the one being stitched (so that memory stays a few windows per worker);
each task reads its window from the file in the worker, normalizes it as the single-process run
does and segments it (:func:`.tasks.compute_window`). The results go through the same stitching
(:func:`.blockwise.segment_blockwise`) in the same order, so the labels and the object table are
those of the single-process ``--blocks`` run. The image file must be readable by the workers at the
same path (a shared file system on a cluster). The cluster is started for the first image that is
not already done, and closed at the end.
"""
from __future__ import annotations

import contextlib
import sys
from collections import deque
from pathlib import Path

#: windows submitted ahead per worker
AHEAD_PER_WORKER = 2


class ClusterSegmenter:
    """A ``segmenter`` for :func:`.large.segment_one` (the arguments of
    :func:`.blockwise.segment_file_blockwise`) that runs the windows on a Dask cluster; use it as a
    context manager (the cluster is closed at its end)."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, stream=None):
        self.workers, self.scheduler, self.stream = workers, scheduler, stream or sys.stderr
        self._stack = contextlib.ExitStack()
        self.client = None
        self.n_windows = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def _connect(self, framework: str, warm):
        from .cluster import connect

        if self.client is None:
            self.client = self._stack.enter_context(connect(self.workers, self.scheduler, framework, self.stream,
                                                            warm=warm))
        return self.client

    def __call__(self, source, out_path, card, block: int = 2048, overlap: int | None = None, pmin=None, pmax=None,
                 progress=None, **segment_kwargs) -> dict:
        from uuid import uuid4

        from ..backends.dispatch import card_payload, job_for
        from ..worker.jobs import framework_of
        from .blockwise import default_overlap, global_normalization, open_source, segment_blockwise, windows
        from .cluster import resources_for
        from .tasks import compute_window

        path = str(Path(source).resolve())
        src = open_source(path)
        if len(src.shape) != 2:
            raise ValueError(f"block-wise segmentation takes a 2-D (YX) image, not shape {tuple(src.shape)}")
        fixed, lo, hi = global_normalization(src, card, pmin, pmax)
        # the single-process run's arithmetic: (x - lo) * float32(1 / (hi - lo + 1e-20)), or none
        norm = None if fixed is card else (float(lo), float(1.0 / (hi - lo + 1e-20)))
        payload = card_payload(fixed)
        if payload.get("path"):
            payload["path"] = str(Path(payload["path"]).resolve())  # workers may run in another folder
        framework = framework_of(job_for(fixed, task="segment"))
        client = self._connect(framework, ("segment", payload))
        resources = resources_for(framework) or None
        overlap = default_overlap(block) if overlap is None else overlap
        wins = [win for _, win in windows(tuple(int(s) for s in src.shape), block, overlap)]
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        ahead = AHEAD_PER_WORKER * n_workers + 1
        token = uuid4().hex[:8]
        pending: deque = deque()

        def submit(k):
            pending.append(client.submit(compute_window, path, wins[k], payload, norm, segment_kwargs, pure=False,
                                         resources=resources, key=f"block-{Path(path).name}-{token}-{k}"))

        def results():
            nxt = 0
            while nxt < len(wins) or pending:
                while nxt < len(wins) and len(pending) < ahead:
                    submit(nxt)
                    nxt += 1
                fut = pending.popleft()
                res = fut.result()
                fut.release()
                yield res

        it = results()
        try:
            table = segment_blockwise(src, out_path, None, block, overlap, progress, window_results=it)
        finally:
            it.close()
            if pending:
                client.cancel(list(pending))
        self.n_windows += len(wins)
        return table


def segment_files_on_cluster(files, out_dir, model=None, *, workers: int | None = None, scheduler: str | None = None,
                             block: int = 2048, stream=None, **kwargs):
    """:func:`.blockwise.segment_files_blockwise` (the ``segment --blocks N`` command) with every
    image's windows run on a Dask cluster (``workers=N``: a LocalCluster; ``scheduler``: an existing
    one); the same outputs, skips and error handling. Returns its ``(done, skipped, failed, model)``."""
    from .blockwise import segment_files_blockwise

    with ClusterSegmenter(workers, scheduler, stream) as seg:
        return segment_files_blockwise(files, out_dir, model, block=block, segmenter=seg, **kwargs)


__all__ = ["AHEAD_PER_WORKER", "ClusterSegmenter", "segment_files_on_cluster"]
