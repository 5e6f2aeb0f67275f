"""The epoch count of a run that a time budget ends, and the progress line of an epoch."""
from __future__ import annotations

#: epochs when a time budget decides the end (the trainers stop by the clock long before)
MANY_EPOCHS = 10000


def epoch_message(epoch: int, total: int) -> str:
    """The progress line of an epoch: ``epoch 3/20``, or ``epoch 3`` when a time budget ends the run
    (``total`` is :data:`MANY_EPOCHS` or more), where a count of epochs would mean nothing."""
    return f"epoch {epoch}" if total >= MANY_EPOCHS else f"epoch {epoch}/{total}"
