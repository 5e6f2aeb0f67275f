"""JobRunner (how widgets run worker jobs): every metric event, Stop keeps the model, a training
beside inference, and one wording for errors wherever they were raised."""
import os

import pytest

from napari_cnnvision.core.progress import Cancelled
from napari_cnnvision.widgets._compute import MIN_UPDATE_S, JobRunner, describe_error


def _finish(qtbot, w, timeout=30000):
    with qtbot.waitSignal(w.finished, timeout=timeout):
        pass


def test_every_metric_event_arrives_in_order_while_bar_updates_are_throttled(qtbot, pool):
    runner = JobRunner(pool)
    log, bars, done = [], [], []
    w = runner.start("toy.train", {"epochs": 50, "steps": 20, "seconds": 2.0},
                     on_progress=bars.append, on_metrics=lambda ev: log.append(ev.metrics["epoch"]),
                     on_done=lambda res: (done.append(res), log.append("done")))
    _finish(qtbot, w)
    assert log == list(range(1, 51)) + ["done"]  # all 50 epochs, in order, before the result
    assert done[0]["epochs"] == 50
    # 1,050 events in ~2 s: the bar gets at most ~1 update per MIN_UPDATE_S (plus start and end)
    assert 1 <= len(bars) <= 2.0 / MIN_UPDATE_S * 3
    assert bars[-1].fraction == 1.0


def test_stop_returns_the_model_and_cancel_of_inference_spares_the_training(qtbot, pool):
    """A training runs in its own worker: inference on the same framework completes meanwhile, and
    Cancel of that inference kills only its own worker; Stop then ends the training with its model."""
    trainer, segmenter = JobRunner(pool), JobRunner(pool)
    epochs, trained, errors = [], [], []
    wt = trainer.start("toy.train", {"epochs": 400, "seconds": 40.0}, on_metrics=epochs.append,
                       on_done=trained.append, on_error=errors.append)
    qtbot.waitUntil(lambda: len(epochs) >= 2, timeout=20000)
    train_pid = pool.worker_for("toy.train").pid

    results = []
    w = segmenter.start("sleep", {"seconds": 0.2, "steps": 2}, on_done=results.append, on_error=errors.append)
    _finish(qtbot, w, timeout=10000)
    assert results and results[0]["pid"] != train_pid and trainer.running

    progressed = []
    w = segmenter.start("sleep", {"seconds": 30, "steps": 300}, on_progress=progressed.append,
                        on_error=errors.append)
    qtbot.waitUntil(lambda: bool(progressed), timeout=10000)
    predict_pid = pool.worker_for("sleep").pid
    segmenter.cancel()
    _finish(qtbot, w, timeout=10000)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    with pytest.raises(ProcessLookupError):
        os.kill(predict_pid, 0)
    os.kill(train_pid, 0)  # the training's worker lives on
    assert trainer.running

    n = len(epochs)
    trainer.stop()
    _finish(qtbot, wt, timeout=10000)
    assert len(errors) == 1 and trained
    res = trained[0]
    assert res["stopped"] and n <= res["epochs"] < 400 and (res["weights"] == res["epochs"]).all()
    assert pool.worker_for("toy.train").pid == train_pid  # Stop keeps the process (and its models)


USER_ERRORS = ["InputError", "ModelNotFound", "CorruptModel", "ModelUnavailable"]


def _local(kind, message):
    from napari_cnnvision.worker.builtin_jobs import _error_class

    return _error_class(kind)(message)


@pytest.mark.parametrize("kind", USER_ERRORS)
def test_user_errors_read_the_same_from_napari_and_from_the_worker(pool, kind):
    from napari_cnnvision.worker import JobError

    message = f"the {kind} message"
    with pytest.raises(JobError) as ei:
        pool.run("fail", {"message": message, "kind": kind})
    assert describe_error(ei.value) == message
    assert describe_error(_local(kind, message)) == message


def test_unexpected_errors_name_their_type_from_both_origins(pool, caplog):
    from napari_cnnvision.worker import JobError

    with pytest.raises(JobError) as ei:
        pool.run("fail", {"message": "boom", "kind": "ValueError"})
    expected = "Unexpected error (ValueError): boom; details in the log"
    assert describe_error(ei.value) == expected
    assert "Traceback" in caplog.text and "boom" in caplog.text  # the details are in the log
    assert describe_error(ValueError("boom")) == expected
    assert describe_error(Cancelled("stopped by the user")) == "Cancelled."


class _FailingPool:
    """A pool whose run raises in napari's process (as it would for a model checked locally)."""

    def __init__(self, exc):
        self.exc = exc

    def run(self, *args, **kwargs):
        raise self.exc


def test_runtime_errors_raised_in_napari_reach_on_error_unchanged(qtbot):
    """RuntimeError subclasses (ModelUnavailable) pass through the Qt thread helper unchanged, so they
    read like the same error from the worker (no 'ComputeError: ModelUnavailable: ...')."""
    exc = _local("ModelUnavailable", "not cached; connect once")
    errors = []
    JobRunner(_FailingPool(exc)).start("echo", {}, on_error=errors.append)
    # the job fails at once: its finished signal may come before a waitSignal would connect
    qtbot.waitUntil(lambda: bool(errors), timeout=30000)
    assert errors == [exc]
    assert describe_error(errors[0]) == "not cached; connect once"
