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

    ``emit`` may be called from any thread. ``check()`` raises :class:`Cancelled` once a
    stop was requested, so long loops call it between units of work.
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
