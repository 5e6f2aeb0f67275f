"""The Models dock widget: what models exist, fetching pretrained ones, and the compute workers."""
from __future__ import annotations

from magicgui.widgets import ComboBox, Container, Label, PushButton, Table

from ..core.registry import ModelRegistry
from ._compute import JobRunner, describe_error, pool_for


class ModelsWidget(Container):
    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = registry or ModelRegistry()
        self.pool = pool_for(napari_viewer)
        self.runner = JobRunner(self.pool, owner=self.native)
        self.table = Table(value=self._rows())
        self.pretrained = ComboBox(label="pretrained", choices=self._pretrained_choices)
        self.download_btn = PushButton(text="Download")
        self.status = Label(value="")
        self.workers = Label(value="")
        self.refresh_btn = PushButton(text="Refresh")
        self.restart_btn = PushButton(text="Restart compute workers")
        self.extend([self.table, self.pretrained, self.download_btn, self.status, self.workers,
                     self.refresh_btn, self.restart_btn])
        self.download_btn.clicked.connect(self.download)
        self.refresh_btn.clicked.connect(self.refresh)
        self.restart_btn.clicked.connect(self.restart)
        self.refresh()
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self.native)  # keep the worker line current
        self._timer.setInterval(2000)
        self._timer.timeout.connect(self._refresh_workers)
        self._timer.start()

    def _rows(self):
        cards = self.registry.list()
        return {"data": [[c.name, c.task, c.backend, c.source, c.path or "(not downloaded)"] for c in cards],
                "index": list(range(len(cards))), "columns": ["name", "task", "backend", "source", "path"]}

    def _pretrained_choices(self, *_):
        return [c.name for c in self.registry.list() if c.source == "pretrained" and c.path is None]

    def download(self, *_):
        from ..backends.pretrained import download_job_name

        name = self.pretrained.value
        if not name or self.runner.running:
            return
        self.download_btn.enabled = False
        self.status.value = f"downloading {name} ..."
        self.runner.start(download_job_name(name), {"name": name},
                          on_done=lambda path: setattr(self.status, "value", f"{name}: cached in {path}"),
                          on_error=self._error, on_finished=self._finished)

    def _error(self, exc):
        from napari.utils.notifications import show_error

        self.status.value = describe_error(exc)
        show_error(self.status.value)

    def _finished(self):
        self.download_btn.enabled = True
        self.refresh()

    def refresh(self, *_):
        self.table.value = self._rows()
        self.pretrained.reset_choices()
        self._refresh_workers()

    def _refresh_workers(self):
        ws = self.pool.workers
        if not ws:
            self.workers.value = "compute workers: none running (they start with the first job)"
        else:
            self.workers.value = "compute workers: " + ", ".join(
                f"{fw}: {'pid ' + str(w.pid) if w.alive else 'stopped'}" for fw, w in ws.items())

    def restart(self, *_):
        self.pool.shutdown()
        self.refresh()
