"""The Train widget's list of interrupted runs (checkpoints in ``<user dir>/.training/<name>``), its
Resume button and its Discard button (asks first): shown only while there is a run to continue."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, PushButton


class ResumeList:
    """``run`` (a ComboBox of run names), ``button`` (Resume) and ``discard``; ``refresh(busy)``
    re-reads the runs."""

    def __init__(self, user_dir):
        self.user_dir = user_dir
        self.run = ComboBox(label="interrupted run", choices=self._choices, visible=False)
        self.button = PushButton(text="Resume", visible=False,
                                 tooltip="continue the interrupted run from its last checkpoint, on the "
                                         "same layers and settings")
        self.discard = PushButton(text="Discard this run", visible=False,
                                  tooltip="delete the interrupted run's checkpoint (asks first); it cannot be "
                                          "resumed afterwards. Layers and models are not touched")

    def widgets(self) -> list:
        return [self.run, self.button, self.discard]

    def _choices(self, *_):
        try:
            from ..backends.runs import interrupted_runs
        except ImportError:  # checkpoints not in this version
            return []
        try:
            return interrupted_runs(self.user_dir)
        except OSError:
            return []

    def refresh(self, busy: bool) -> None:
        self.run.reset_choices()
        has = bool(self.run.choices)
        self.run.visible = self.button.visible = self.discard.visible = has
        self.button.enabled = self.discard.enabled = has and not busy

    def discard_chosen(self, parent) -> str:
        """Ask, then delete the chosen run; a message for the status line ("" when nothing was asked)."""
        from qtpy.QtWidgets import QMessageBox

        from ..backends.runs import discard_run, run_dir
        from ..core.axes import InputError

        name = self.run.value
        if not name:
            return ""
        size = _size_mb(run_dir(self.user_dir, name))
        answer = QMessageBox.question(
            parent, "Discard the interrupted run",
            f"Delete the checkpoint of the interrupted run {name!r} ({size:.1f} MB)?\n\nIt cannot be resumed "
            "afterwards. Your layers and your models are not touched.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return f"kept the interrupted run {name!r}"
        try:
            discard_run(self.user_dir, name)
        except (InputError, OSError) as exc:
            return f"could not discard {name!r}: {exc}"
        return f"discarded the interrupted run {name!r}"


def _size_mb(folder: Path) -> float:
    try:
        return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
    except OSError:
        return 0.0
