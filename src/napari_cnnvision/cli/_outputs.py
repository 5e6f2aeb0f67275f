"""Output naming and overwrite checks shared by the batch commands (segment, detect, localize)."""
from __future__ import annotations

import os
from pathlib import Path


def output_stems(files: list[Path]) -> list[str]:
    """The output stem of each input: its stem, or its whole file name where stems repeat
    (``a.png`` and ``a.tif`` -> ``a.png``, ``a.tif``)."""
    count: dict[str, int] = {}
    for f in files:
        count[f.stem.casefold()] = count.get(f.stem.casefold(), 0) + 1
    return [f.stem if count[f.stem.casefold()] == 1 else f.name for f in files]


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one existing file (also through a link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
