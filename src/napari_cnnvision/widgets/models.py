"""The Models dock widget: what models exist, fetching pretrained ones, exporting a U-Net or
StarDist model as a bioimage.io package (in the compute worker of its framework), and the
compute workers."""
from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, PushButton, Table

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
        self.export_model = ComboBox(label="export model", choices=self._export_choices)
        self.export_dir = FileEdit(label="export into", mode="d")
        self.export_target = StatusLabel(label="package")
        self.export_btn = PushButton(text="Export as bioimage.io package")
        self.workers = StatusLabel()
        self.refresh_btn = PushButton(text="Refresh")
        self.restart_btn = PushButton(text="Restart compute workers")
        self.extend([self.table, self.pretrained, *self.controls(), self.export_model, self.export_dir,
                     self.export_target, self.export_btn, self.workers, self.refresh_btn, self.restart_btn])
        self.export_model.changed.connect(self._show_target)
        self.export_dir.changed.connect(self._show_target)
        self.export_btn.clicked.connect(self.export)
        self._show_target()
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

    # -- export ---------------------------------------------------------------------------
    def _export_choices(self, *_):
        from ..backends.bioimageio.export import EXPORT_JOBS

        return [c.name for c in self.registry.list("segment")
                if c.backend in EXPORT_JOBS and c.path and c.source != "pretrained"]

    def export_path(self) -> Path | None:
        """The package folder an export would write: ``<folder>/<model>-bioimageio``, or with
        ``-2``, ``-3``, ... when that exists (nothing is overwritten); None without a folder."""
        name, parent = self.export_model.value, self.export_dir.value
        if not name or not parent or str(parent) in ("", "."):
            return None
        parent = Path(parent).expanduser()
        base = parent / f"{name}-bioimageio"
        path, k = base, 2
        while path.exists():
            path, k = parent / f"{base.name}-{k}", k + 1
        return path

    def _show_target(self, *_):
        path = self.export_path()
        self.export_target.value = str(path) if path else "choose a model and a folder to export into"
        self.export_btn.enabled = path is not None and not self.runner.running

    def export(self, *_):
        from ..backends.bioimageio.export import export_job_name
        from ..backends.dispatch import card_payload
        from ._base import _USER_ERRORS

        if self.runner.running:
            return
        dest = self.export_path()
        if dest is None:
            self.report("choose a model and a folder to export into")
            return
        try:
            card = self.registry.get(self.export_model.value)
            job = export_job_name(card)
        except _USER_ERRORS as exc:
            self.report_error(exc)
            return
        self.start_job(job, {"model": card_payload(card), "dest": str(dest)},
                       message=f"exporting {card.name} to {dest} ...",
                       on_done=lambda path: self._exported(card.name, path), on_finished=self._show_target)

    def set_busy(self, busy: bool, message: str | None = None):
        super().set_busy(busy, message)
        self.export_btn.enabled = not busy and self.export_path() is not None

    def _exported(self, name, path):
        self.progress.value = 100
        self.report(f"{name}: exported as a bioimage.io package to {path} (valid; its test tensors pass)")

    def refresh(self, *_):
        self.table.value = self._rows()
        self.pretrained.reset_choices()
        self.export_model.reset_choices()
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
