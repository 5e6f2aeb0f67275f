"""What the Train widget shows of a running training: each epoch's losses and validation metric
in the live plot, the status line (with the ETA; a time budget fills the bar by the clock), and
Stop (or the end of the time budget): the job ends after the current epoch, the best model kept."""
from __future__ import annotations

import time

#: the metric keys plotted as the validation metric, first found
METRIC_KEYS = ("val_ap50", "val_map", "val_accuracy")


def fmt_time(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class TrainProgress:
    """A mixin of the Train widget: it has ``runner``, ``plot``, ``progress``, ``status``,
    ``stop_btn``, ``_job`` (``{"name", "task", "metric"}``: the metric's label), ``_t0`` (the
    start, monotonic), ``_budget_s`` (a time budget's seconds, or None) and ``_stopping``."""

    def stop(self, *_):
        if self.runner.running:
            self.runner.stop()
            self._stopping = True
            self.stop_btn.enabled = False
            self.status.value = "stopping after this epoch (the best model so far is kept)..."

    def _budget_over(self):
        if self.runner.running:
            self.runner.stop()
            self._stopping = True
            self.status.value = "time is up: stopping after this epoch (the best model so far is kept)..."

    def _on_metrics(self, ev):
        m = ev.metrics
        if "epoch" not in m:
            return
        train = m.get("train_loss", m.get("loss"))
        metric = next((m[k] for k in METRIC_KEYS if k in m), None)
        self.plot.add(m["epoch"], train, m.get("val_loss"), metric)

    def _fraction(self, ev) -> float | None:
        if self._budget_s:
            return min(1.0, (time.monotonic() - self._t0) / self._budget_s)
        return ev.fraction

    def _on_progress(self, ev):
        f = self._fraction(ev)
        if f is not None:
            self.progress.value = int(round(100 * f))
        if not ev.message:
            return
        msg = ev.message
        if self.plot.epochs and ev.message.startswith("epoch"):
            msg += (f" · train loss {self.plot.train[-1]:.3f} · val loss {self.plot.val[-1]:.3f} · "
                    f"{self._job.get('metric', 'metric')} {self.plot.metric[-1]:.3f}")
            if f:
                elapsed = time.monotonic() - self._t0
                msg += f" · ETA {fmt_time(elapsed * (1 - f) / f)}"
        if self._stopping and not msg.startswith("saved"):
            msg = "stopping... " + msg
        self.status.value = msg
