"""A live plot of a training's curves: train and validation loss (left axis) and the task metric
(right axis) per epoch, on matplotlib's Qt canvas. Drawn at most once per epoch (``draw_idle``;
about 90 ms per draw measured on a 2-core CPU under a load of 8).
Imports matplotlib only (never a framework)."""
from __future__ import annotations

import math


class LossPlot:
    """``native`` is the Qt widget; ``add(epoch, train_loss, val_loss, metric)`` appends one epoch."""

    def __init__(self, metric_name: str = "AP@0.5", height: float = 2.6):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, height))
        # fixed margins: a layout engine re-measures every text on each draw (twice the cost)
        self.figure.subplots_adjust(left=0.17, right=0.83, bottom=0.18, top=0.96)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(int(height * 60))
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        (self._train,) = self.ax.plot([], [], "o-", color="tab:blue", ms=3, label="train loss")
        (self._val,) = self.ax.plot([], [], "o-", color="tab:orange", ms=3, label="val loss")
        (self._metric,) = self.ax2.plot([], [], "s--", color="tab:green", ms=3, label=metric_name)
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("loss")
        self.ax2.set_ylim(0, 1)
        self.ax.legend(handles=[self._train, self._val, self._metric], fontsize="x-small", loc="upper right")
        self.clear(metric_name)

    def set_colors(self, face: str, text: str):
        """Match the viewer's theme (background and text colours)."""
        self.figure.set_facecolor(face)
        for ax in (self.ax, self.ax2):
            ax.set_facecolor(face)
            ax.tick_params(colors=text, which="both")
            ax.xaxis.label.set_color(text)
            ax.yaxis.label.set_color(text)
            for sp in ax.spines.values():
                sp.set_color(text)
        leg = self.ax.get_legend()
        if leg is not None:
            leg.get_frame().set_facecolor(face)
            for t in leg.get_texts():
                t.set_color(text)
        self.canvas.draw_idle()

    @property
    def native(self):
        return self.canvas

    def clear(self, metric_name: str | None = None):
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self.metric: list[float] = []
        if metric_name is not None:
            self._metric.set_label(metric_name)
            self.ax2.set_ylabel(metric_name)
            leg = self.ax.get_legend()
            colors = (leg.get_frame().get_facecolor(), leg.get_texts()[0].get_color()) if leg is not None else None
            self.ax.legend(handles=[self._train, self._val, self._metric], fontsize="x-small", loc="upper right")
            if colors is not None:
                self.ax.get_legend().get_frame().set_facecolor(colors[0])
                for t in self.ax.get_legend().get_texts():
                    t.set_color(colors[1])
        self._redraw()

    def add(self, epoch: int, train_loss: float | None, val_loss: float | None, metric: float | None):
        nan = float("nan")
        self.epochs.append(int(epoch))
        self.train.append(nan if train_loss is None else float(train_loss))
        self.val.append(nan if val_loss is None else float(val_loss))
        self.metric.append(nan if metric is None else float(metric))
        self._redraw()

    def _redraw(self):
        self._train.set_data(self.epochs, self.train)
        self._val.set_data(self.epochs, self.val)
        self._metric.set_data(self.epochs, self.metric)
        losses = [v for v in self.train + self.val if not math.isnan(v)]
        if self.epochs:
            self.ax.set_xlim(0.5, max(self.epochs) + 0.5)
        if losses:
            lo, hi = min(losses), max(losses)
            pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 0.1
            self.ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        self.canvas.draw_idle()
