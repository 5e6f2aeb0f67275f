"""The widgets' progress bar is drawn in the window's next ordinary repaint, never on its own:
under software OpenGL every repaint composes napari's whole window (benchmarks/README,
event-loop stall during training)."""
from napari_cnnvision.widgets._base import ProgressBar


def _count_paints(qwidget):
    from qtpy.QtCore import QEvent, QObject

    class Counter(QObject):
        n = 0

        def eventFilter(self, obj, ev):  # noqa: N802 - Qt's name
            if ev.type() == QEvent.Type.Paint:
                Counter.n += 1
            return False

    counter = Counter(qwidget)
    qwidget.installEventFilter(counter)
    return Counter


def test_progress_value_is_painted_later_once(qtbot):
    from qtpy.QtWidgets import QApplication

    bar = ProgressBar(min=0, max=100, value=0)
    qtbot.addWidget(bar.native)
    bar.native.show()
    qtbot.waitExposed(bar.native)
    QApplication.processEvents()
    paints = _count_paints(bar.native)

    bar.value = 37  # text shown: Qt's own setValue would repaint here, synchronously
    assert bar.value == 37 and bar.native.value() == 37
    assert paints.n == 0, "the bar was repainted at once"
    bar.value = 38
    bar.value = 39
    assert paints.n == 0
    qtbot.waitUntil(lambda: paints.n >= 1, timeout=2000)
    QApplication.processEvents()
    assert paints.n == 1, f"{paints.n} repaints for three values set together"
    assert bar.native.updatesEnabled()

    bar.value = 39  # unchanged: nothing to draw
    QApplication.processEvents()
    assert paints.n == 1
