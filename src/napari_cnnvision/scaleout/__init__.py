"""Batches of images on a Dask cluster (``dask.distributed``): a LocalCluster of N processes or
an existing scheduler (e.g. a dask-jobqueue cluster on SLURM/PBS), the same code path.

One Dask task per image. The task runs the model's backend in the Dask worker's own process
(no nested compute worker), so each worker loads a model once and reuses it (the backends
cache loaded models per process). TensorFlow and PyTorch never share a worker process: every
task asks for the Dask worker *resource* named after its framework (``tf`` or ``torch``, one
unit), so it only runs on workers started with that resource -- a LocalCluster gets it by
itself, workers of an existing cluster are started with ``--resources torch=1`` (or
``tf=1``; never both on one worker). One unit per worker also means one inference at a time
per worker process.

The client (this process) writes each image's outputs as its task finishes, with the same
writers and names as the plain command; see :func:`run_batch`. The workers import the framework
and load the model while the cluster starts (:mod:`.warm`); ``segment --blocks N`` with a cluster
runs each window of a block-wise image as a task (:mod:`.cluster_blocks`). Importing this package
imports neither dask nor a deep-learning framework.
"""
from __future__ import annotations

from .batch import BatchSummary, run_batch

__all__ = ["BatchSummary", "run_batch", "add_cluster_arguments", "wants_cluster"]


def add_cluster_arguments(parser) -> None:
    """``--workers N`` and ``--scheduler ADDRESS`` of the batch commands."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the batch on a local Dask cluster of N worker processes (one task per image)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the batch on an existing Dask cluster: its scheduler address (tcp://host:8786) or "
                        "scheduler file; its workers need the resource torch=1 or tf=1 (the model's framework)")


def wants_cluster(args) -> bool:
    """True when the command line asked for a Dask cluster."""
    return getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None
