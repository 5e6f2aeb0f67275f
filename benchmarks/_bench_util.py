"""Helpers shared by the benchmark scripts (not a benchmark itself).

The scripts import this module from their own folder, so each of them still runs on its
own as ``python benchmarks/NAME.py``.
"""
from __future__ import annotations

import atexit
import math
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- statistics -----------------------------------------------------------------------
def quantile(values, q: float) -> float:
    """Linear-interpolated quantile (``q`` in 0..1), like numpy's default."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


# -- display ---------------------------------------------------------------------------
_XVFB = None


def ensure_display(verbose: bool = True) -> None:
    """Make sure Qt can open windows: on Linux without ``DISPLAY``, start a private Xvfb.

    napari needs a real X server with GLX under Xvfb; ``QT_QPA_PLATFORM=offscreen`` does
    not work for it, so the platform is forced to ``xcb`` on Linux. Child processes
    inherit ``DISPLAY``, so one Xvfb serves a whole run. The server is stopped at exit.
    """
    global _XVFB
    if not sys.platform.startswith("linux"):
        return
    if os.environ.get("QT_QPA_PLATFORM", "xcb") != "xcb":
        if verbose:
            print(f"note: QT_QPA_PLATFORM={os.environ['QT_QPA_PLATFORM']} replaced by xcb (napari needs GLX)")
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    if os.environ.get("DISPLAY"):
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("no DISPLAY and no Xvfb on PATH: install xvfb (see `make sysdeps`) or run under a display")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(w), "-screen", "0", "1600x1200x24", "-nolisten", "tcp", "+extension", "GLX"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    os.close(w)
    number = b""
    with os.fdopen(r, "rb") as f:  # Xvfb writes the display number once it accepts connections
        while not number.endswith(b"\n"):
            chunk = f.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip():
        proc.kill()
        sys.exit("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number.decode().strip()}"
    _XVFB = proc
    atexit.register(_stop_xvfb)
    if verbose:
        print(f"started Xvfb on DISPLAY={os.environ['DISPLAY']} (pid {proc.pid})")


def _die_with_parent():
    """In the child before exec: SIGTERM it when this process dies, even by os._exit or a kill."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort; atexit stops it otherwise
        pass


def _stop_xvfb():
    if _XVFB is not None and _XVFB.poll() is None:
        _XVFB.terminate()
        try:
            _XVFB.wait(5)
        except subprocess.TimeoutExpired:
            _XVFB.kill()


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``, all CPUs; None where there is none)."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_note(since: list[int] | None) -> str:
    """The share of CPU time the hypervisor took from this (virtual) machine since ``since``
    (:func:`cpu_times`): while it is high, the event loop waits for a CPU that is not there."""
    now = cpu_times()
    if since is None or now is None or len(now) < 8:
        return "CPU steal: not known"
    d = [b - a for a, b in zip(since, now)]
    total = sum(d[:8])
    return f"CPU steal {100 * d[7] / total:.0f} % of the machine's CPU time" if total > 0 else "CPU steal: not known"


def machine_note() -> str:
    """One line on the machine's load, since every figure here is sensitive to it."""
    try:
        load = os.getloadavg()
        return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:  # pragma: no cover
        return f"{os.cpu_count()} CPUs"
