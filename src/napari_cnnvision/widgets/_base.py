"""What every job-running dock widget shares: a wrapping status line, a progress bar, Run / Cancel
buttons with a busy state, one way to report errors, and the compute-worker runner.

A task widget (Segment, Detect, Localize, Train) derives from :class:`JobWidget`, adds its own
inputs above :meth:`JobWidget.controls` and calls :meth:`JobWidget.start_job`; the result comes
back to its ``on_done`` on the GUI thread.
"""
from __future__ import annotations

import re

from magicgui.widgets import Container, Label, PushButton
from magicgui.widgets import ProgressBar as _ProgressBar

from ..core.axes import InputError
from ..core.registry import CorruptModel, ModelNotFound, ModelRegistry
from ._compute import JobRunner, describe_error, pool_for

#: errors found in napari's process whose message is for the user as it is (no class name)
_USER_ERRORS = (InputError, ModelNotFound, CorruptModel)
_ZWSP = "\u200b"
_LONG_TOKEN = re.compile(r"\S{40,}")


def _breakable(text: str) -> str:
    """Let Qt wrap long unbroken runs (paths, URLs) too: a zero-width space every 30 characters."""
    return _LONG_TOKEN.sub(lambda m: _ZWSP.join(m.group(0)[i:i + 30] for i in range(0, len(m.group(0)), 30)),
                           text)


def fmt_seconds(s: float) -> str:
    """A run's time in a status line: "2.8 s", or "40 ms" below a tenth of a second (not "0.0 s")."""
    s = max(0.0, float(s))
    return f"{s * 1000:.0f} ms" if s < 0.1 else f"{s:.1f} s"


#: longer messages are cut in the dock (the full text is the tooltip and ``.value``)
MAX_SHOWN = 300


class StatusLabel(Label):
    """A label for messages of any length: it wraps onto more lines instead of widening the dock.

    Its width never grows the dock (the layout gives it the dock's width and the text wraps there;
    long paths and URLs wrap too); its height follows the wrapped text, so nothing is cut off.
    Messages over :data:`MAX_SHOWN` characters are shortened in the dock; ``value`` and the
    tooltip keep the full text.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("value", "")
        self._full = ""
        super().__init__(**kwargs)
        from qtpy.QtCore import QEvent, QObject, Qt
        from qtpy.QtWidgets import QSizePolicy

        q = self.native
        q.setWordWrap(True)
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        policy.setHeightForWidth(True)
        q.setSizePolicy(policy)
        q.setMinimumWidth(0)
        q.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        class _FitHeight(QObject):  # the wrapped text's height at the width the dock gives
            def eventFilter(self, obj, ev):
                if ev.type() == QEvent.Type.Resize:
                    _fit_height(obj)
                return False

        self._fit = _FitHeight(q)
        q.installEventFilter(self._fit)

    @property
    def value(self) -> str:
        return self._full

    @value.setter
    def value(self, text) -> None:
        text = "" if text is None else str(text)
        self._full = text
        shown = text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1].rstrip() + "…"
        Label.value.fset(self, _breakable(shown))
        self.native.setToolTip(text if len(text) > 80 else "")
        _fit_height(self.native)


class ProgressBar(_ProgressBar):
    """magicgui's progress bar, repainted with the rest of the window.

    ``QProgressBar::setValue`` repaints at once (``repaint()``, not ``update()``): under
    software OpenGL each repaint composes napari's whole window (~30 ms), and a status line
    changed beside it composes the window a second time. Here the new value is drawn in the
    next ordinary repaint, one for everything that changed (Qt's ``setUpdatesEnabled(True)``
    posts one ``update()``); an unchanged value costs nothing.
    """

    def set_value(self, value) -> None:
        if int(value) == self.value:
            return
        q = self.native
        q.setUpdatesEnabled(False)
        try:
            super().set_value(value)
        finally:
            q.setUpdatesEnabled(True)


def _fit_height(q) -> None:
    h = q.heightForWidth(max(q.width(), 1)) if q.text() else 0
    if h > 0 and h != q.minimumHeight():
        q.setMinimumHeight(h)
    elif not q.text():
        q.setMinimumHeight(0)


class JobWidget(Container):
    """Base of the dock widgets that run compute jobs.

    Subclasses build their inputs, then ``self.extend([... inputs ..., *self.controls()])``.
    ``self.run`` (their own) is connected to the Run button.
    """

    run_text = "Run"

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None, **kwargs):
        super().__init__(**kwargs)
        self.viewer = napari_viewer
        self.registry = registry or ModelRegistry()
        self.runner = JobRunner(pool_for(napari_viewer), owner=self.native)
        self.run_btn = PushButton(text=self.run_text)
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = StatusLabel(label="")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self._blocked: str | None = None  # why Run is off while idle (e.g. a damaged model folder)

    def controls(self) -> list:
        return [self.run_btn, self.cancel_btn, self.progress, self.status]

    def run(self, *_):  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def cancel(self, *_):
        self.runner.cancel()

    # -- state ----------------------------------------------------------------------------
    def block(self, reason: str | None):
        """Keep Run disabled (with ``reason`` in the status) until called with ``None``."""
        was = self._blocked
        self._blocked = reason
        if reason:
            self.status.value = reason
        elif was and self.status.value == was:
            self.status.value = ""
        self.run_btn.enabled = not self.runner.running and not reason

    def set_busy(self, busy: bool, message: str | None = None):
        self.run_btn.enabled = not busy and not self._blocked
        self.cancel_btn.enabled = busy
        if busy:
            self.progress.value = 0
        if message is not None:
            self.status.value = message

    def report(self, message: str):
        self.status.value = message

    def report_error(self, exc: BaseException):
        """One line in the status (and a napari notification); the bar goes back to 0."""
        from napari.utils.notifications import show_error, show_info

        msg = str(exc) if isinstance(exc, _USER_ERRORS) else describe_error(exc)
        self.progress.value = 0
        self.status.value = msg
        (show_info if msg == "Cancelled." else show_error)(msg)

    # -- jobs -----------------------------------------------------------------------------
    def start_job(self, job: str, kwargs: dict, on_done, message: str, on_finished=None):
        """Run ``job`` in the compute worker; ``on_done(result)`` runs on the GUI thread."""
        self.set_busy(True, message)

        def finished():
            self.set_busy(False)
            if on_finished is not None:
                on_finished()

        return self.runner.start(job, kwargs, on_progress=self._on_progress, on_done=on_done,
                                 on_error=self.report_error, on_finished=finished)

    def _on_progress(self, ev):
        if ev.fraction is not None:
            self.progress.value = int(round(100 * ev.fraction))
        if ev.message:
            self.status.value = ev.message
