"""Per-object tables (dict of equal-length columns) to CSV, written atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .io import atomic_write_text


def write_table(path: str | Path, table: dict) -> Path:
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for i in range(n):
        row = []
        for c in cols:
            v = table[c][i]
            row.append(int(v) if isinstance(v, (np.integer, int)) else
                       (float(v) if isinstance(v, (np.floating, float)) else v))
        w.writerow(row)
    return atomic_write_text(path, buf.getvalue())

