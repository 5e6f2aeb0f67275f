"""The compute workers: separate, long-lived processes that run TensorFlow / PyTorch jobs.

napari's process never imports either framework (they crash beside Qt's OpenGL stack).
Jobs are named entries of :data:`~napari_cnnvision.worker.jobs.JOBS`; a
:class:`WorkerPool` runs them in one process per framework and kind of job (training or
not); arrays travel through shared memory; progress events stream back; Stop is
cooperative, Cancel kills the job's process; a killed or crashed worker is replaced on
the next job.
"""
from .client import ComputeError, ComputeWorker, JobError, WorkerCrashed, WorkerPool

__all__ = ["ComputeError", "ComputeWorker", "JobError", "WorkerCrashed", "WorkerPool"]
