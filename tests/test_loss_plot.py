"""The Train widget's live plot draws on a thread of its own: the GUI thread only stores the
numbers and shows finished images, so a slow matplotlib draw never stalls napari's event loop."""
import threading
import time

import pytest


@pytest.fixture
def plot(qtbot):
    from napari_cnnvision.widgets._loss_plot import LossPlot

    p = LossPlot("mAP@0.5")
    qtbot.addWidget(p.native)
    p.native.resize(400, 160)
    p.native.show()
    return p


def test_the_plot_draws_off_the_gui_thread_and_shows_the_latest_state(plot, qtbot):
    import napari_cnnvision.widgets._loss_plot as lp

    seen = []
    render = lp._Figure.render

    def slow(self, state):  # a draw as slow as on a loaded machine
        time.sleep(0.2)
        seen.append((threading.get_ident(), list(state["epochs"])))
        return render(self, state)

    lp._Figure.render = slow
    try:
        assert plot.wait_drawn(60)
        n0 = len(seen)
        t = time.perf_counter()
        for e in range(1, 31):
            plot.add(e, 1.0 / e, 1.5 / e, e / 40)
        assert time.perf_counter() - t < 0.15  # 30 epochs stored without waiting for 30 draws of 0.2 s
        assert plot.epochs == list(range(1, 31)) and plot.metric[-1] == 0.75
        assert plot.wait_drawn(60)
    finally:
        lp._Figure.render = render
    main = threading.get_ident()
    assert seen and all(tid != main for tid, _ in seen)
    assert seen[-1][1] == list(range(1, 31))  # the image shown is of the latest state
    assert len(seen) - n0 < 10  # requests during a draw merge into one
    pix = plot.native.pixmap()
    assert not pix.isNull() and (pix.width(), pix.height()) == (plot.native.width(), plot.native.height())


def test_a_resize_redraws_at_the_new_size_and_the_thread_ends_with_the_widget(qtbot):
    from qtpy.QtWidgets import QVBoxLayout, QWidget

    from napari_cnnvision.widgets._loss_plot import LossPlot

    host = QWidget()
    host.setLayout(QVBoxLayout())
    p = LossPlot("AP@0.5")
    host.layout().addWidget(p.native)
    host.resize(500, 300)
    host.show()
    p.set_colors("#262930", "#f0f1f2")
    p.add(1, 0.9, 1.0, 0.3)
    assert p.wait_drawn(60)
    p.native.setFixedSize(300, 200)
    qtbot.waitUntil(lambda: p.native.pixmap().width() == 300 and p.native.pixmap().height() == 200, timeout=60000)
    host.deleteLater()
    qtbot.waitUntil(lambda: not p._thread.is_alive(), timeout=60000)
    p.add(2, 0.8, 0.9, 0.4)  # after the widget is gone: no error


@pytest.mark.parametrize("height, epochs", [(160, [1, 2]), (260, [1, 2]), (160, [])])
def test_the_legend_covers_no_curve_and_the_epoch_axis_fits(qtbot, height, epochs):
    from napari_cnnvision.widgets._loss_plot import _Figure

    f = _Figure(100.0, 2.6)
    curves = [[0.9, 0.5][:len(epochs)], [1.0, 0.7][:len(epochs)], [0.3, 0.6][:len(epochs)]]
    f.render({"colors": ("#262930", "#f0f1f2"), "metric_name": "AP@0.5", "size": (400, height, 1.0),
              "epochs": epochs, "train": curves[0], "val": curves[1], "metric": curves[2]})
    r = f.canvas.get_renderer()
    axes = f.ax.get_window_extent(r)
    legend = f.ax.get_legend().get_window_extent(r)
    assert legend.y0 >= axes.y1 - 1 and legend.y1 <= height + 1  # a row above the axes, inside the image
    xlabel = f.ax.xaxis.label.get_window_extent(r)
    assert xlabel.y0 >= 0 and xlabel.y1 <= axes.y0  # "epoch" below the axes, not cut off
    ticks = [t for t in f.ax.get_xticks() if 0.5 <= t <= 2.5]
    assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs only, even before the first
    assert f.ax.get_ylim()[0] >= 0  # no negative loss axis
