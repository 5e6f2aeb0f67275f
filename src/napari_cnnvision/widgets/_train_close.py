"""The Train widget asks before napari's window or its own dock closes while a training runs
(:class:`._close_guard.CloseGuard`): both once the widget is docked (its top-level window is then
napari's, and napari sets the dock's title bar after taking the widget)."""
from __future__ import annotations

import weakref


def install_close_guard(widget) -> None:
    """``widget.close_guard`` watching napari's window and the dock's button (now or once docked)."""
    from qtpy.QtCore import QEvent, QObject, QTimer

    from ._close_guard import CloseGuard

    widget.close_guard = CloseGuard(widget)
    ref = weakref.ref(widget)

    class _OnDock(QObject):  # once docked: guard napari's window and the dock's close button
        def eventFilter(self, obj, ev):  # noqa: N802
            if ev.type() == QEvent.Type.ParentChange and ref() is not None:
                QTimer.singleShot(0, lambda: ref() is not None and guard_dock_button(ref()))
            return False

    widget._on_dock = _OnDock(widget.native)
    widget.native.installEventFilter(widget._on_dock)
    guard_dock_button(widget)


def guard_dock_button(widget) -> None:
    """The main window holding ``widget`` (napari's) and the close button of its dock (napari's
    title bar), if any."""
    from qtpy.QtWidgets import QMainWindow

    top = widget.native.window()
    if isinstance(top, QMainWindow):
        widget.close_guard.watch(top)
    w = widget.native.parent()
    while w is not None and not hasattr(w, "destroyOnClose"):
        w = w.parent()
    if w is None:
        return
    bar = w.titleBarWidget() if hasattr(w, "titleBarWidget") else None
    button = getattr(bar, "close_button", None)
    if button is not None:
        widget.close_guard.watch(button, mouse=True)
