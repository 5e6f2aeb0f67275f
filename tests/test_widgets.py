"""Widgets open in napari; a worker killed mid-job leaves napari and its layers intact."""
import os
import signal

import numpy as np
import pytest
import yaml
from conftest import ROOT

from napari_cnnvision.widgets._compute import JobRunner, pool_for


def _widget_names():
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    return [w["display_name"] for w in manifest["contributions"]["widgets"]]


@pytest.mark.parametrize("name", _widget_names())
def test_widget_opens(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-cnnvision", name)
    assert widget is not None and dock is not None


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    for key, ndim in (("nuclei_2d", 2), ("he_2d", 2), ("nuclei_3d", 3)):
        viewer.open_sample("napari-cnnvision", key)
        assert viewer.layers[key].ndim == ndim
    assert viewer.layers["he_2d"].rgb


def test_killed_worker_reports_error_and_keeps_layers(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    viewer.add_image(img, name="cells")
    labels = viewer.add_labels(np.zeros((64, 64), np.uint8), name="annotations")
    labels.data[3:9, 3:9] = 2
    before = {lyr.name: np.array(lyr.data, copy=True) for lyr in viewer.layers}

    runner = JobRunner(pool_for(viewer))
    events, errors, results = [], [], []
    w = runner.start("sleep", {"seconds": 30, "steps": 300}, on_progress=events.append,
                     on_error=errors.append, on_done=results.append)
    qtbot.waitUntil(lambda: len(events) >= 3, timeout=20000)  # the job is really running
    pid = runner.pool.worker_for("sleep").pid
    os.kill(pid, signal.SIGKILL)
    with qtbot.waitSignal(w.finished, timeout=10000):
        pass
    assert len(errors) == 1 and "stopped unexpectedly" in str(errors[0])
    assert not results and not runner.running
    assert {lyr.name for lyr in viewer.layers} == set(before)
    for lyr in viewer.layers:
        np.testing.assert_array_equal(lyr.data, before[lyr.name])

    w2 = runner.start("echo", {"image": img}, on_done=results.append, on_error=errors.append)
    with qtbot.waitSignal(w2.finished, timeout=30000):
        pass
    assert len(errors) == 1
    np.testing.assert_array_equal(results[0]["args"]["image"], img)
    assert results[0]["pid"] != pid


def test_cancel_button_stops_job(make_napari_viewer, qtbot):
    from napari_cnnvision.core.progress import Cancelled

    viewer = make_napari_viewer()
    runner = JobRunner(pool_for(viewer))
    events, errors = [], []
    w = runner.start("sleep", {"seconds": 30, "steps": 300}, on_progress=events.append, on_error=errors.append)
    qtbot.waitUntil(lambda: len(events) >= 2, timeout=20000)
    runner.cancel()
    with qtbot.waitSignal(w.finished, timeout=10000):
        pass
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)


def test_closing_the_widget_mid_job_cancels_it_quietly(make_napari_viewer, qtbot):
    """Closing napari (or the dock widget) while a job runs: the job is cancelled and no
    callback touches the deleted Qt widgets."""
    from magicgui.widgets import Container, ProgressBar

    viewer = make_napari_viewer()
    panel = Container()
    bar = ProgressBar(min=0, max=100)
    panel.append(bar)
    runner = JobRunner(pool_for(viewer), owner=panel.native)
    calls, exceptions = [], []
    w = runner.start("sleep", {"seconds": 30, "steps": 300},
                     on_progress=lambda ev: (calls.append(ev), setattr(bar, "value", 50)),
                     on_error=lambda exc: setattr(bar, "value", 0),
                     on_finished=lambda: setattr(bar, "value", 100))
    qtbot.waitUntil(lambda: len(calls) >= 2, timeout=20000)
    pid = runner.pool.worker_for("sleep").pid
    with qtbot.capture_exceptions() as exceptions:
        panel.native.deleteLater()
        qtbot.waitUntil(lambda: not runner.running, timeout=10000)
        qtbot.wait(300)
    assert not exceptions, exceptions
    with pytest.raises(ProcessLookupError):  # the worker was killed, not left running for 30 s
        os.kill(pid, 0)
    assert w is not None


LONG_WORDS = "the compute worker stopped unexpectedly while segmenting " * 36  # ~2,000 characters
LONG_TOKEN = "/very/long/path/" + "x" * 2000  # no place to break at all


def _canvas_width(viewer, qtbot):
    qtbot.wait(150)  # let the layouts settle
    return viewer.window._qt_viewer.canvas.native.width()


@pytest.mark.parametrize("which", ["Segment", "Models"])
def test_long_messages_wrap_and_the_dock_keeps_its_width(make_napari_viewer, qtbot, which):
    from napari_cnnvision.widgets.models import ModelsWidget
    from napari_cnnvision.widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 800)
    w = (SegmentWidget if which == "Segment" else ModelsWidget)(viewer)
    viewer.window.add_dock_widget(w, name=which)
    canvas0, window0 = _canvas_width(viewer, qtbot), viewer.window._qt_window.width()
    height0 = viewer.window._qt_window.height()
    assert canvas0 > 300
    for text in (LONG_WORDS, LONG_TOKEN):
        w.report_error(RuntimeError(text))  # what a crash, a refusal or an offline download shows
        assert abs(_canvas_width(viewer, qtbot) - canvas0) <= 4, text[:40]
        assert viewer.window._qt_window.width() == window0
        assert viewer.window._qt_window.height() == height0  # nor grows the window downwards
        assert w.status.native.wordWrap()
        w.status.value = text  # a plain status line too
        assert abs(_canvas_width(viewer, qtbot) - canvas0) <= 4
    w.report_error(RuntimeError(LONG_WORDS))
    qtbot.wait(150)
    assert w.status.native.height() > 3 * w.status.native.fontMetrics().height()  # wrapped, not cut off
    assert LONG_WORDS.strip() in w.status.value  # the full message stays available


def test_a_run_time_in_a_status_line_is_never_0_0_s():
    from napari_cnnvision.widgets._base import fmt_seconds

    assert fmt_seconds(2.84) == "2.8 s" and fmt_seconds(0.1) == "0.1 s"
    assert fmt_seconds(0.042) == "42 ms" and fmt_seconds(0.0) == "0 ms" and fmt_seconds(-1) == "0 ms"
