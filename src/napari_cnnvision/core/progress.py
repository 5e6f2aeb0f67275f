"""Progress reporting and cooperative cancellation used by every backend.

Backends take a ``Progress`` object; the compute worker passes one that streams events
back to napari, the CLI one that draws a terminal bar, tests a recording one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class Cancelled(Exception):
    """The user asked the running job to stop."""


@dataclass
class ProgressEvent:
    fraction: float | None
    message: str = ""
    metrics: dict = field(default_factory=dict)


class Progress:
    """Callable sink for progress events with a stop flag.

    ``progress(fraction, message, **metrics)`` reports; events with metrics (a training's
    ``epoch=3, loss=0.2``) all reach a caller that asks for them, plain bar updates may be
    thinned out. ``emit`` may be called from any thread.

    Stop (the user's button, the caller's ``should_cancel``) is cooperative, and the job
    decides what it means: a prediction calls ``check()`` between units of work, which raises
    :class:`Cancelled`; a training reads ``stop_requested`` (it never raises) after an epoch and
    returns normally with the model it has.
    """

    def __init__(self, emit: Callable[[ProgressEvent], None] | None = None,
                 stop_requested: Callable[[], bool] | None = None):
        self._emit = emit
        self._stop_requested = stop_requested or (lambda: False)

    def __call__(self, fraction: float | None, message: str = "", **metrics) -> None:
        if self._emit is not None:
            self._emit(ProgressEvent(None if fraction is None else float(fraction), message, metrics))

    @property
    def stop_requested(self) -> bool:
        """True once a stop was requested (stays true for the rest of the job)."""
        return bool(self._stop_requested())

    def check(self) -> None:
        if self.stop_requested:
            raise Cancelled("stopped by the user")


class RecordingProgress(Progress):
    """Keeps every event in ``events`` (handy in tests and scripts)."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[ProgressEvent] = []
        super().__init__(self.events.append,
                         lambda: stop_after is not None and len(self.events) >= stop_after)


NULL_PROGRESS = Progress()
