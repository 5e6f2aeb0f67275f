"""A terminal progress bar fed by backend progress events."""
from __future__ import annotations

import sys

from ..core.progress import Progress


class TerminalProgress(Progress):
    def __init__(self, desc: str = "", stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.desc = desc
        self.enabled = enabled
        self._last = None
        super().__init__(self._draw)

    def _draw(self, ev):
        if not self.enabled:
            return
        frac = ev.fraction
        bar = "" if frac is None else "[" + "#" * int(30 * frac) + "." * (30 - int(30 * frac)) + f"] {100 * frac:5.1f}%"
        line = f"\r{self.desc} {bar} {ev.message}"[:120]
        if line != self._last:
            self.stream.write(line.ljust(120))
            self.stream.flush()
            self._last = line

    def close(self):
        if self.enabled and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()
