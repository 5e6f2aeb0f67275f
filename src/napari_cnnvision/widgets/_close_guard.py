"""Ask before closing while a training runs, then stop it cleanly.

Closing napari's window, or the dock's close button of the widget, while ``busy()`` is true asks
first (a :class:`QMessageBox`). "No" keeps everything as it is; "Yes" asks the job to stop after
its current epoch (cooperative Stop: the trainer registers the best model so far) and waits for it,
with the GUI running, in a small dialog whose "Quit now" ends the job at once instead (the last
checkpoint stays, so the run can be resumed). Only then does the close go on.
"""
from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QEventLoop, QObject, QTimer
from qtpy.QtWidgets import QMessageBox, QProgressDialog

QUESTION = ("A training is running. Stop it now? The best model so far is saved and registered; "
            "closing waits until the current epoch has ended.")


class CloseGuard(QObject):
    """Guards the job of ``owner`` (a widget with ``runner``, a :class:`._compute.JobRunner`, and
    ``stop()``, its cooperative Stop). Holds the owner weakly (Qt keeps this object alive as
    long as the owner's Qt widget; a strong reference would keep the viewer alive too)."""

    def __init__(self, owner):
        super().__init__(owner.native)
        self._owner = weakref.ref(owner)
        self._watched: list = []
        self.asked = 0  # how often the question was asked (tests, logs)

    @property
    def _widget(self):
        o = self._owner()
        return None if o is None else o.native

    def running(self) -> bool:
        o = self._owner()
        return o is not None and o.runner.running

    busy = running

    def stop(self) -> None:
        o = self._owner()
        if o is not None:
            o.stop()

    def kill(self) -> None:
        o = self._owner()
        if o is not None:
            o.runner.cancel()

    def watch(self, obj, mouse: bool = False) -> None:
        """Guard ``obj``'s close events (a main window) or, with ``mouse``, its clicks (a close button)."""
        if obj is None or any(r() is obj for r in self._watched):
            return
        obj.installEventFilter(self)
        self._watched.append(weakref.ref(obj))  # weakly: the window holds the viewer
        if mouse:
            obj.setProperty("cnnvision_close_button", True)

    def eventFilter(self, obj, ev):  # noqa: N802 - Qt's name
        t = ev.type()
        is_button = bool(obj.property("cnnvision_close_button"))
        if (t == QEvent.Type.Close and not is_button) or (is_button and t == QEvent.Type.MouseButtonRelease):
            if self.busy() and not self.confirm():
                ev.ignore()
                if is_button and hasattr(obj, "setDown"):
                    obj.setDown(False)
                return True
        return False

    def confirm(self) -> bool:
        """Ask; on Yes stop the run and wait for it. True: the close may go on."""
        self.asked += 1
        answer = QMessageBox.question(self._widget, "Training is running", QUESTION,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.stop()
        self.wait()
        return True

    def wait(self) -> None:
        """Run the GUI until the job has ended (its callbacks register the model)."""
        if not self.running():
            return
        loop = QEventLoop()
        dialog = QProgressDialog("Stopping the training after its current epoch; the best model so far is "
                                 "being saved...", "Quit now", 0, 0, self._widget)
        dialog.setWindowTitle("Stopping the training")
        dialog.setMinimumDuration(0)

        def quit_now():
            self.kill()
            loop.quit()

        dialog.canceled.connect(quit_now)
        timer = QTimer()
        timer.timeout.connect(lambda: loop.quit() if not self.running() else None)
        timer.start(100)
        dialog.show()
        loop.exec()
        timer.stop()
        dialog.canceled.disconnect(quit_now)
        dialog.close()

    def unwatch_all(self) -> None:
        for ref in self._watched:
            obj = ref()
            try:
                if obj is not None:
                    obj.removeEventFilter(self)
            except RuntimeError:  # already deleted
                pass
        self._watched.clear()
