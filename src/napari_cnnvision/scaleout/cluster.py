"""A ``dask.distributed`` client: on a new LocalCluster of N processes or an existing scheduler."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

#: frameworks that get a Dask worker resource of their own (the compute-worker rule, on a cluster)
FRAMEWORKS = ("tf", "torch")
#: a LocalCluster's housekeeping, made less frequent: Dask's defaults sample every thread's stack
#: every 10 ms (the dashboard's profile), check the event loop every 20 ms and the memory every
#: 100 ms -- together ~12 % of a core for an idle 1-worker cluster (measured: 120 -> 15 ms/s),
#: taken from the tasks on a machine whose cores the workers use (benchmarks/README.md)
QUIET = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "500ms",
         "distributed.admin.system-monitor.interval": "2s", "distributed.worker.memory.monitor-interval": "500ms"}


def resources_for(framework: str) -> dict:
    """The worker resources a task of ``framework`` asks for (``{}``: any worker)."""
    return {framework: 1} if framework in FRAMEWORKS else {}


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, framework: str = "none",
            stream=None, warm: tuple[str, dict] | None = None):
    """Yield a Client: on a LocalCluster of ``workers`` processes (1 Dask thread each, the
    framework's resource, the CPU cores shared out among them, :data:`QUIET` housekeeping) or on
    ``scheduler`` (an address or a scheduler file). Both closed at the end (an existing cluster is
    left running). ``warm=(task, card payload)``: the workers import the framework and load the
    model while the cluster starts (:mod:`.warm`)."""
    from distributed import Client, LocalCluster

    from . import warm as warm_up

    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers=N or scheduler=ADDRESS")
    stream = stream or sys.stderr
    resources = resources_for(framework)
    cluster = None
    t0 = time.perf_counter()
    if workers is not None:
        if workers < 1:
            raise ValueError(f"--workers must be 1 or more (got {workers})")
        cluster = _local_cluster(LocalCluster, workers, resources,
                                 config=warm_up.config_for(*warm) if warm is not None else None)
        client = Client(cluster)
    elif Path(scheduler).is_file():
        client = Client(scheduler_file=scheduler)
    else:
        client = Client(scheduler)
    plugged = False
    try:
        if warm is not None and cluster is None:  # an existing cluster's workers: for this batch only
            client.register_plugin(warm_up.plugin(*warm, framework if resources else None))
            plugged = True
        up = f" (local cluster of {workers} started in {time.perf_counter() - t0:.1f} s)" if cluster is not None else ""
        print(f"dask: scheduler {client.scheduler.address}; dashboard: {dashboard(client)}{up}", file=stream)
        if resources:
            wait_for_resource(client, framework, stream)
        yield client
    finally:
        t1 = time.perf_counter()
        if plugged:
            with contextlib.suppress(Exception):  # a lost scheduler: nothing left to remove
                client.unregister_worker_plugin(warm_up.PLUGIN_NAME)
        client.close()
        if cluster is not None:
            cluster.close()
            print(f"dask: local cluster closed in {time.perf_counter() - t1:.1f} s", file=stream)


def _local_cluster(LocalCluster, workers: int, resources: dict, threads: int | None = None, config=None):
    """N worker processes of 1 Dask thread; the CPU cores shared out among them as the framework's
    threads (Dask's default is 1 each). Dask sets these variables before it spawns a worker, in
    this process too: they are put back afterwards. ``threads``: that number instead. The
    cluster gets :data:`QUIET` and ``config`` (dask config; the nannies hand it to the workers)."""
    import dask

    threads = str(threads or max(1, (os.cpu_count() or 1) // workers))
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        with dask.config.set({**QUIET, **(config or {}),
                              **{f"distributed.nanny.pre-spawn-environ.{k}": threads for k in keys}}):
            for k in keys:
                os.environ.pop(k, None)  # else the caller's value wins over the config's
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                resources=resources or None, dashboard_address=":0", silence_logs=logging.ERROR)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dashboard(client) -> str:
    """The dashboard's address, or why there is none."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return "not running (install bokeh on the scheduler's machine for one)"
    return client.dashboard_link


def wait_for_resource(client, framework: str, stream, poll: float = 0.5) -> None:
    """Wait until a worker offers ``framework``'s resource (workers of a job queue may come later)."""
    said = False
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if any(w.get("resources", {}).get(framework, 0) >= 1 for w in workers.values()):
            return
        if not said:
            print(f"dask: waiting for a worker with the resource {framework}=1 ({len(workers)} connected without it); "
                  f"start workers with: dask worker ADDRESS --nthreads 1 --resources {framework}=1", file=stream)
            said = True
        time.sleep(poll)
