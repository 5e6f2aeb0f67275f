"""One runner for stacks and time-lapses: call a per-frame function on each selected frame.

Not tied to a task: the per-frame function returns whatever its backend needs (labels and
probabilities for segmentation, boxes for detection); the runner reports progress per frame
and per tile, honours Cancel between units of work, adds up timings and gathers the outputs
in frame order. Pure Python + numpy.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..core.progress import NULL_PROGRESS, Progress

Index = tuple  # a position in the image's leading (frame) axes; () for a single image


@dataclass
class FrameStep:
    """What the per-frame function gets: where it is, and how to report tiles and time."""

    index: Index  # position in the leading axes, e.g. (t,), (t, z) or ()
    position: int  # 0-based number of this frame among the selected ones
    count: int  # number of selected frames
    progress: Progress
    timings: dict[str, float]
    label: str = "frame"
    notes: list[str] = field(default_factory=list)  # appended to this frame's progress message

    def tile(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` units (tiles) of this frame; raises Cancelled on a stop request."""
        frac = (self.position + 0.9 * done / max(1, total)) / self.count
        self.progress(frac, f"{self.label} {self.position + 1}/{self.count}: tile {done}/{total}")
        self.progress.check()

    @contextmanager
    def timed(self, name: str):
        """Add the time spent in the block to ``timings[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def run_frames(indices: Sequence[Index], per_frame: Callable[[FrameStep], object],
               progress: Progress = NULL_PROGRESS, describe: Callable[[object], str] | None = None,
               label: str = "frame", timings: dict[str, float] | None = None) -> list:
    """``[per_frame(step) for each index]`` with progress and cancellation.

    After each frame the progress message is ``"{label} k/n: " + describe(output)`` (plus the
    step's ``notes``); ``timings`` (a dict, updated in place) collects :meth:`FrameStep.timed`.
    """
    timings = {} if timings is None else timings
    outs = []
    n = len(indices)
    for k, idx in enumerate(indices):
        progress.check()
        step = FrameStep(tuple(idx), k, n, progress, timings, label)
        out = per_frame(step)
        outs.append(out)
        text = describe(out) if describe is not None else ""
        text = " ".join([t for t in [text] + step.notes if t])
        progress((k + 1) / n, f"{label} {k + 1}/{n}" + (f": {text}" if text else ""))
    return outs


def frame_indices(leading_shape: tuple[int, ...], frames: Iterable[int] | None = None) -> list[Index]:
    """Positions in the leading axes, in order; ``frames`` (optional) keeps only those positions
    of the first leading axis (out-of-range ones are ignored)."""
    import itertools

    if not leading_shape:
        return [()]
    first = range(leading_shape[0]) if frames is None else [int(f) for f in frames if 0 <= int(f) < leading_shape[0]]
    rest = [range(s) for s in leading_shape[1:]]
    return [(f, *r) for f in first for r in itertools.product(*rest)]


__all__ = ["FrameStep", "run_frames", "frame_indices"]
