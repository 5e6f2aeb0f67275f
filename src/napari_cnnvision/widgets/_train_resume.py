"""The Train widget's list of interrupted runs (checkpoints in ``<user dir>/.training/<name>``) and
its Resume button: shown only while there is a run to continue."""
from __future__ import annotations

from magicgui.widgets import ComboBox, PushButton


class ResumeList:
    """``run`` (a ComboBox of run names) and ``button``; ``refresh(busy)`` re-reads the runs."""

    def __init__(self, user_dir):
        self.user_dir = user_dir
        self.run = ComboBox(label="interrupted run", choices=self._choices, visible=False)
        self.button = PushButton(text="Resume", visible=False,
                                 tooltip="continue the interrupted run from its last checkpoint, on the "
                                         "same layers and settings")

    def widgets(self) -> list:
        return [self.run, self.button]

    def _choices(self, *_):
        try:
            from ..backends.checkpoint import interrupted_runs
        except ImportError:  # checkpoints not in this version
            return []
        try:
            return interrupted_runs(self.user_dir)
        except OSError:
            return []

    def refresh(self, busy: bool) -> None:
        self.run.reset_choices()
        has = bool(self.run.choices)
        self.run.visible = self.button.visible = has
        self.button.enabled = has and not busy
