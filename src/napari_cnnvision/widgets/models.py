"""The Models dock widget: what models exist, and the state of the compute workers."""
from __future__ import annotations

from magicgui.widgets import Container, Label, PushButton, Table

from ..core.registry import ModelRegistry
from ._compute import pool_for


class ModelsWidget(Container):
    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry or ModelRegistry()
        self.pool = pool_for(napari_viewer)
        self.table = Table(value=self._rows())
        self.workers = Label(value="")
        self.refresh_btn = PushButton(text="Refresh")
        self.restart_btn = PushButton(text="Restart compute workers")
        self.extend([self.table, self.workers, self.refresh_btn, self.restart_btn])
        self.refresh_btn.clicked.connect(self.refresh)
        self.restart_btn.clicked.connect(self.restart)
        self.refresh()

    def _rows(self):
        cards = self.registry.list()
        return {"data": [[c.name, c.task, c.backend, c.source, c.path or "(not downloaded)"] for c in cards],
                "columns": ["name", "task", "backend", "source", "path"]}

    def refresh(self, *_):
        self.table.value = self._rows()
        ws = self.pool.workers
        if not ws:
            self.workers.value = "compute workers: none running (they start with the first job)"
        else:
            self.workers.value = "compute workers: " + ", ".join(
                f"{fw}: {'pid ' + str(w.pid) if w.alive else 'stopped'}" for fw, w in ws.items())

    def restart(self, *_):
        self.pool.shutdown()
        self.refresh()
