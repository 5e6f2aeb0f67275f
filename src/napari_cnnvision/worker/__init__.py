"""The compute worker: a separate, long-lived process that runs TensorFlow / PyTorch jobs.

napari's process never imports either framework (they crash beside Qt's OpenGL stack).
Jobs are named entries of :data:`~napari_cnnvision.worker.jobs.JOBS`; arrays travel
through shared memory; progress events stream back; a killed or crashed worker is
replaced on the next job.
"""
from .client import ComputeError, ComputeWorker, JobError, WorkerCrashed, WorkerPool

__all__ = ["ComputeError", "ComputeWorker", "JobError", "WorkerCrashed", "WorkerPool"]
