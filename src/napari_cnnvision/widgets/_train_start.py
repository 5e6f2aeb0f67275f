"""The Train press off the GUI thread: the widget reads its layers there (references to their data),
then the training request -- stacking the pairs, cutting the training set, the trainer's settings
(:func:`~..backends.training.plan.plan`) -- is built in a thread of napari's process
(:meth:`._compute.JobRunner.start_task`), and the job starts from the GUI thread once it is ready.
Meanwhile Train is disabled and Cancel drops the request; its errors are the status message."""
from __future__ import annotations

from ..core.axes import InputError

#: what the Train press uses besides the widget's own modules: the training-set builders, the
#: trainers' settings classes (none imports a deep-learning framework)
PRESS_MODULES = ("napari_cnnvision.backends.training.segmentation", "napari_cnnvision.backends.training.detection",
                 "napari_cnnvision.backends.training.localization", "napari_cnnvision.backends.training.naming",
                 "napari_cnnvision.widgets._train_layers")


def warm_imports() -> None:
    """Import :data:`PRESS_MODULES` and the settings modules of the plan in a daemon thread, so that
    the first Train press does not: on the GUI thread an import stalls napari's event loop, and in
    the press's thread it competes with it for the interpreter."""
    import importlib
    import threading

    from ..backends.training.plan import SETTINGS_CLASS

    names = PRESS_MODULES + tuple(dict.fromkeys(t.split(":")[0] for t in SETTINGS_CLASS.values()))

    def run():
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # pragma: no cover - the press reports its own errors
                pass

    threading.Thread(target=run, name="cnnvision-warm-imports", daemon=True).start()


def as_input_error(exc: BaseException) -> BaseException:
    """What the user gets for an error of the request: the message of a bad value, path or name."""
    if isinstance(exc, InputError) or not isinstance(exc, (ValueError, OSError, LookupError)):
        return exc
    return InputError(str(exc))


def plan_then_start(widget, build, launch, message: str = "building the training set...", on_failed=None) -> None:
    """``build()`` in a thread, then ``launch(plan)`` on the GUI thread (``widget``: a JobWidget);
    ``on_failed()`` (GUI thread) when there is no plan: an error, or Cancel."""
    widget.set_busy(True, message)
    planned: list = []

    def task(ctx):
        try:
            p = build()
        except (ValueError, OSError, LookupError) as exc:
            raise as_input_error(exc) from None
        ctx.check()  # Cancel pressed meanwhile: no job
        return p

    def finished():  # the runner is free again here
        if planned:
            launch(planned[0])
            return
        widget.set_busy(False)
        if on_failed is not None:
            on_failed()

    widget.runner.start_task(task, on_done=planned.append, on_error=widget.report_error, on_finished=finished,
                             name="train-plan")
