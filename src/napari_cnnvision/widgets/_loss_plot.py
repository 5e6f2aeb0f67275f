"""A live plot of a training's curves: train and validation loss (left axis) and the task metric
(right axis) per epoch. Imports matplotlib only (never a framework).

The figure is drawn by matplotlib's Agg renderer on a thread of its own, never on the GUI
thread: one draw costs ~55 ms of CPU (2 axes, ticks, legend; measured on this 2-core machine),
many times that in wall time on a loaded machine, which stalled napari's event loop at every
epoch. The GUI thread only stores the numbers and shows the finished image (a QImage copy,
~1 ms); requests that arrive while a draw runs are merged into one draw of the latest state.
Only the drawing thread touches the figure.
"""
from __future__ import annotations

import functools
import math
import threading


@functools.lru_cache(maxsize=None)
def _label_class():
    from qtpy.QtCore import QSize, Qt, Signal
    from qtpy.QtWidgets import QLabel, QSizePolicy

    class PlotLabel(QLabel):
        """Shows the rendered figure; a resize asks for a new drawing at the new size."""

        rendered = Signal(object, int)  # (QImage, generation), emitted by the drawing thread

        def __init__(self, on_resize):
            super().__init__()
            self._on_resize = on_resize
            self.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

        def sizeHint(self):  # noqa: N802 - Qt's names; not the pixmap's size, so the dock can shrink
            return QSize(400, max(self.minimumHeight(), 160))

        def minimumSizeHint(self):  # noqa: N802
            return QSize(self.minimumWidth(), self.minimumHeight())

        def resizeEvent(self, ev):  # noqa: N802 - Qt's name
            super().resizeEvent(ev)
            self._on_resize()

    return PlotLabel


def _alive(widget) -> bool:
    """Whether the Qt object behind ``widget`` still exists (safe from any thread: a flag read)."""
    try:
        from qtpy import sip

        return not sip.isdeleted(widget)
    except ImportError:  # PySide
        try:
            import shiboken6

            return shiboken6.isValid(widget)
        except ImportError:
            return True


class LossPlot:
    """``native`` is the Qt widget; ``add(epoch, train_loss, val_loss, metric)`` appends one epoch.
    ``epochs`` / ``train`` / ``val`` / ``metric`` hold the numbers at once; the drawing follows."""

    def __init__(self, metric_name: str = "AP@0.5", height: float = 2.6, dpi: float = 100.0):
        self._dpi = float(dpi)
        self._height = float(height)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict | None = None  # the latest state to draw (None: nothing new)
        self._closed = False
        self._generation = 0  # of the state last requested; older images are not shown
        self._shown = -1
        self._colors: tuple[str, str] | None = None
        self._metric_name = metric_name
        self._size = (int(4 * dpi), int(height * dpi), 1.0)  # width, height (px), device pixel ratio
        self.draws = 0  # finished drawings (tests, benchmarks)
        self.draw_threads: set[int] = set()
        self.label = _label_class()(self._resized)
        self.label.setMinimumHeight(int(height * 60))
        self.label.setMinimumWidth(160)
        self.label.rendered.connect(lambda image, generation: self._show(image, generation))
        self._thread = threading.Thread(target=self._loop, name="loss-plot", daemon=True)
        self._thread.start()
        self.clear(metric_name)

    # -- the GUI thread's side ------------------------------------------------------------
    @property
    def native(self):
        return self.label

    def set_colors(self, face: str, text: str):
        """Match the viewer's theme (background and text colours)."""
        self._colors = (face, text)
        self._request()

    def clear(self, metric_name: str | None = None):
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self.metric: list[float] = []
        if metric_name is not None:
            self._metric_name = metric_name
        self._request()

    def add(self, epoch: int, train_loss: float | None, val_loss: float | None, metric: float | None):
        nan = float("nan")
        self.epochs.append(int(epoch))
        self.train.append(nan if train_loss is None else float(train_loss))
        self.val.append(nan if val_loss is None else float(val_loss))
        self.metric.append(nan if metric is None else float(metric))
        self._request()

    def wait_drawn(self, timeout: float = 10.0) -> bool:
        """Block until the latest state is drawn and shown (tests); processes Qt events."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._shown != self._generation and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._shown == self._generation

    def close(self, *_):
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _resized(self):
        try:
            dpr = float(self.label.devicePixelRatioF())
        except (AttributeError, RuntimeError):
            dpr = 1.0
        size = (max(self.label.width(), 50), max(self.label.height(), 50), dpr)
        if size != self._size:
            self._size = size
            self._request()

    def _request(self):
        state = {"epochs": list(self.epochs), "train": list(self.train), "val": list(self.val),
                 "metric": list(self.metric), "metric_name": self._metric_name, "colors": self._colors,
                 "size": self._size}
        with self._wake:
            self._generation += 1
            self._pending = {**state, "generation": self._generation}
            self._wake.notify()

    def _show(self, image, generation: int):
        if generation < self._shown or not _alive(self.label):  # an image that arrives after the widget is gone
            return
        from qtpy.QtGui import QPixmap

        pix = QPixmap.fromImage(image)
        pix.setDevicePixelRatio(self._size[2])
        self.label.setPixmap(pix)
        self._shown = generation

    # -- the drawing thread ---------------------------------------------------------------
    def _loop(self):
        fig = None
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    if not self._wake.wait(timeout=2.0) and not _alive(self.label):
                        self._closed = True  # the widget is gone: so is this thread
                if self._closed:
                    return
                state, self._pending = self._pending, None
            try:
                if fig is None:
                    fig = _Figure(self._dpi, self._height)
                image = fig.render(state)
            except Exception:  # noqa: BLE001 - a failed drawing leaves the last image; never the widget
                continue
            self.draws += 1
            self.draw_threads.add(threading.get_ident())
            try:
                self.label.rendered.emit(image, state["generation"])
            except RuntimeError:  # the widget is gone
                return


class _Figure:
    """The matplotlib figure (Agg canvas); used by the drawing thread only."""

    def __init__(self, dpi: float, height: float):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.dpi = dpi
        self.figure = Figure(figsize=(4, height), dpi=dpi)
        # fixed margins: a layout engine re-measures every text on each draw (twice the cost)
        # (bottom and top: :meth:`render`, in pixels for the tick labels, the x label and the legend's row)
        self.figure.subplots_adjust(left=0.17, right=0.83)
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        (self._train,) = self.ax.plot([], [], "o-", color="tab:blue", ms=3, label="train loss")
        (self._val,) = self.ax.plot([], [], "o-", color="tab:orange", ms=3, label="val loss")
        (self._metric,) = self.ax2.plot([], [], "s--", color="tab:green", ms=3, label="metric")
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("loss")
        from matplotlib.ticker import MaxNLocator

        self.ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs: no 1.5
        self.ax2.set_ylim(0, 1)
        self._style = (None, None)

    def _legend(self, colors):
        leg = self.ax.legend(handles=[self._train, self._val, self._metric], fontsize="x-small", ncol=3,
                             loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, borderaxespad=0.3)
        if colors is not None:
            for t in leg.get_texts():
                t.set_color(colors[1])

    def render(self, s: dict):
        from qtpy.QtGui import QImage

        colors, name = s["colors"], s["metric_name"]
        if (colors, name) != self._style:
            self._metric.set_label(name)
            self.ax2.set_ylabel(name)
            if colors is not None:
                face, text = colors
                self.figure.set_facecolor(face)
                for ax in (self.ax, self.ax2):
                    ax.set_facecolor(face)
                    ax.tick_params(colors=text, which="both")
                    ax.xaxis.label.set_color(text)
                    ax.yaxis.label.set_color(text)
                    for sp in ax.spines.values():
                        sp.set_color(text)
            self._legend(colors)
            self._style = (colors, name)
        w, h, dpr = s["size"]  # logical pixels: the text keeps its size on a high-DPI screen
        self.figure.set_dpi(self.dpi * dpr)
        self.figure.set_size_inches(w / self.dpi, h / self.dpi, forward=False)
        self.figure.subplots_adjust(bottom=min(0.4, 44 / max(h, 1)), top=1 - min(0.3, 22 / max(h, 1)))
        epochs = s["epochs"]
        self._train.set_data(epochs, s["train"])
        self._val.set_data(epochs, s["val"])
        self._metric.set_data(epochs, s["metric"])
        losses = [v for v in s["train"] + s["val"] if not math.isnan(v)]
        self.ax.set_xlim(0.5, (max(epochs) if epochs else 1) + 0.5)
        if losses:
            lo, hi = min(losses), max(losses)
            pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 0.1
            self.ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        else:  # before the first epoch: no negative losses on the axis
            self.ax.set_ylim(0.0, 1.0)
        self.canvas.draw()
        buf = self.canvas.buffer_rgba()
        hh, ww = buf.shape[:2]
        return QImage(bytes(buf), ww, hh, 4 * ww, QImage.Format.Format_RGBA8888).copy()
