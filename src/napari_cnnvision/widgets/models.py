"""The Models dock widget: what models exist, fetching pretrained ones, and the compute workers."""
from __future__ import annotations

from magicgui.widgets import ComboBox, PushButton, Table

from ..core.registry import ModelRegistry
from ._base import JobWidget, StatusLabel


class ModelsWidget(JobWidget):
    run_text = "Download"

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__(napari_viewer, registry)
        self.pool = self.runner.pool
        self.download_btn = self.run_btn
        self.table = Table(value=self._rows())
        self.pretrained = ComboBox(label="pretrained", choices=self._pretrained_choices)
        self.workers = StatusLabel()
        self.refresh_btn = PushButton(text="Refresh")
        self.restart_btn = PushButton(text="Restart compute workers")
        self.extend([self.table, self.pretrained, *self.controls(), self.workers, self.refresh_btn,
                     self.restart_btn])
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

    def run(self, *_):
        self.download()

    def download(self, *_):
        from ..backends.pretrained import download_job_name

        name = self.pretrained.value
        if not name or self.runner.running:
            return
        self.start_job(download_job_name(name), {"name": name}, message=f"downloading {name} ...",
                       on_done=lambda path: self._downloaded(name, path), on_finished=self.refresh)

    def _downloaded(self, name, path):
        self.progress.value = 100
        self.report(f"{name}: cached in {path}")

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
