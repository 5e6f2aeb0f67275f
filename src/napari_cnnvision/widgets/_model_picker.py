"""Choosing a model of one task: the registry's models, or a folder picked by the user (a model
folder, a bioimage.io package folder, or a package's .zip, chosen with the button beside it).

Shared by every task widget. A folder that is not a model, or a damaged one, is reported
(:meth:`ModelPicker.check`), never treated as "no settings".
"""
from __future__ import annotations

from magicgui.widgets import ComboBox, FileEdit, PushButton

from ..core.axes import InputError
from ..core.registry import CorruptModel, ModelCard, ModelNotFound, ModelRegistry, read_card

BROWSE = "(model folder below)"
#: what choosing or reading a model may raise (each has a message for the user)
MODEL_ERRORS = (InputError, ModelNotFound, CorruptModel, ValueError, OSError)


class ModelPicker:
    """A model combo box (``self.model``) plus a folder field (``self.folder``) and a button for a
    package's .zip (``self.zip_btn``; the zip's path goes into the same field), shown for "browse"."""

    def __init__(self, registry: ModelRegistry, task: str):
        self.registry, self.task = registry, task
        self.model = ComboBox(label="model", choices=self._choices)
        self.folder = FileEdit(label="model folder", mode="d", visible=False,
                               tooltip="a model folder or a bioimage.io package (folder, or its .zip)")
        self.zip_btn = PushButton(text="or choose a bioimage.io package .zip ...", visible=False)
        self.zip_btn.clicked.connect(lambda *_: self.choose_zip())
        try:  # start on the task's default model (a card may say "default": true), as the CLI and API do
            self.model.value = registry.default(task).name
        except MODEL_ERRORS:
            pass
        self.model.changed.connect(self._toggle_folder)
        self._toggle_folder()  # "browse" may be the only (so the first) choice: no change event fires

    @property
    def widgets(self) -> list:
        return [self.model, self.folder, self.zip_btn]

    def choose_zip(self) -> None:
        """Ask for a .zip file; a chosen one goes into the folder field (and is read like a folder)."""
        from pathlib import Path

        from qtpy.QtWidgets import QFileDialog

        start = str(self.folder.value) if self.folder.value and str(self.folder.value) not in ("", ".") else ""
        path, _ = QFileDialog.getOpenFileName(self.zip_btn.native, "Choose a bioimage.io package", start,
                                              "bioimage.io packages (*.zip);;all files (*)")
        if path:
            self.folder.value = Path(path)

    def connect(self, callback):
        """Call ``callback()`` whenever the choice (or the chosen folder) changes."""
        self.model.changed.connect(lambda *_: callback())
        self.folder.changed.connect(lambda *_: callback())

    def _choices(self, *_):
        cards = self.registry.list(self.task)
        return [(f"{c.name}  ({c.source})", c.name) for c in cards] + [("browse to a model folder or package...",
                                                                        BROWSE)]

    def _toggle_folder(self, *_):
        browse = self.model.value == BROWSE
        self.folder.visible = browse
        self.zip_btn.visible = browse and self.task == "segment"  # bioimage.io packages segment

    def card(self) -> ModelCard:
        """The chosen model's card; raises one of :data:`MODEL_ERRORS` with a message."""
        if self.model.value == BROWSE:
            path = self.folder.value
            if not path or str(path) in ("", "."):
                raise InputError("choose a model folder or a bioimage.io package (.zip)")
            card = read_card(path, "path")
        else:
            if self.model.value is None:
                raise ModelNotFound(f"no {self.task} model is available")
            card = self.registry.get(self.model.value)
        if card.task != self.task:
            raise InputError(f"model {card.name!r} is a {card.task} model, not a {self.task} model")
        return card

    def check(self, extra=None) -> tuple[ModelCard | None, str | None]:
        """``(card, None)`` or ``(None, message)``; ``extra(card)`` may read more of the folder
        (e.g. its thresholds) and raise as well."""
        try:
            card = self.card()
            if extra is not None:
                extra(card)
            return card, None
        except MODEL_ERRORS as exc:
            return None, str(exc)
