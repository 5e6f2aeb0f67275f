"""Where a batch's results go: the plain commands' output names and writers, fed one finished
image at a time (in any order), plus ``errors.csv`` for the images that failed.

Each kind plans its outputs before anything runs (the same refusals as the plain command),
says which inputs are already done (a re-run skips them), writes one image's result as it
arrives and, at the end, the files that merge the batch (the COCO file, the localization table).
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

ERRORS_NAME = "errors.csv"


class Outputs:
    """Base: ``pending`` (input indices to run), ``write(i, result)``, ``finish()``."""

    verb = "processed"

    def __init__(self, files: list[Path], out: Path):
        self.files, self.out = files, out
        self.pending: list[int] = list(range(len(files)))

    def write(self, i: int, res) -> str:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def outputs(self) -> list[Path]:
        """The per-image output files (checked against the errors table's name)."""
        return []


class SegmentOutputs(Outputs):
    verb = "segmented"

    def __init__(self, files, out, card, overwrite=False, **_):
        from ..cli.segment import plan_outputs

        super().__init__(files, out)
        self.plan = plan_outputs(files, out)
        self.pending = [i for i, (tif, csv_) in enumerate(self.plan)
                        if overwrite or not (tif.exists() and csv_.exists())]

    def outputs(self):
        return [p for pair in self.plan for p in pair]

    def write(self, i, res):
        from ..cli.segment import write_outputs

        tif, csv_ = self.plan[i]
        self.out.mkdir(parents=True, exist_ok=True)
        write_outputs(res, tif, csv_)
        return f"{res.n_objects} objects -> {tif}"


class DetectOutputs(Outputs):
    verb = "detected"

    def __init__(self, files, out, card, overwrite=False, formats=None, **_):
        from ..cli.detect import COCO_NAME, FORMATS, _previous, plan_outputs

        super().__init__(files, out)
        self.formats = tuple(dict.fromkeys(formats or FORMATS))
        self.csvs = plan_outputs(files, out, self.formats)
        self.coco_path = out / COCO_NAME
        self.previous = (_previous(self.coco_path, card.classes, overwrite)
                         if "coco" in self.formats and card.classes else {})
        self.class_names = list(card.classes)
        self.entries: dict[str, dict] = {}
        self.pending = []
        for i, (f, csv_) in enumerate(zip(files, self.csvs)):
            done = (csv_ is None or csv_.exists()) and ("coco" not in self.formats or f.name in self.previous)
            if done and not overwrite:
                if f.name in self.previous:
                    self.entries[f.name] = self.previous[f.name]
            else:
                self.pending.append(i)
        self.n_new = 0

    def outputs(self):
        return [p for p in self.csvs if p is not None]

    def write(self, i, res):
        from ..cli.detect import coco_entry
        from ..core.formats import boxtable

        f, csv_ = self.files[i], self.csvs[i]
        if csv_ is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            boxtable.write_rows(csv_, boxtable.rows_of(f.name, res), frames=res.has_frames)
        self.class_names = list(res.class_names)
        self.entries[f.name] = coco_entry(f.name, res)
        self.n_new += 1
        return f"{res.n_objects} objects"

    def finish(self):
        from ..cli.detect import write_coco

        if "coco" in self.formats and (self.n_new or self.previous):
            write_coco(self.coco_path, {**self.previous, **self.entries}, self.class_names)


class LocalizeOutputs(Outputs):
    """One table for the batch, rewritten (atomically, at most every ``every`` s) as rows arrive;
    images already in an existing table keep their rows and are skipped."""

    verb = "localized"

    def __init__(self, files, out, card, every: float = 2.0, **_):
        from ..cli._outputs import same_file
        from ..cli.localize import TABLE_NAME

        super().__init__(files, out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a folder")
        self.table = out / TABLE_NAME
        for f in files:
            if same_file(f, self.table) or same_file(f, out):
                raise ValueError(f"the output {self.table} would overwrite the input {f}; choose another --out folder")
        old: dict[str, list[dict]] = {}
        if self.table.is_file():
            with open(self.table, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    old.setdefault(row["image"], []).append({k: v for k, v in row.items() if v != ""})
        self.rows = {i: old[f.name] for i, f in enumerate(files) if f.name in old}
        self.pending = [i for i in range(len(files)) if i not in self.rows]
        self.every, self._last = every, time.monotonic()

    def write(self, i, res):
        from ..cli.localize import rows_of

        self.rows[i] = rows_of(self.files[i].name, res)
        if time.monotonic() - self._last >= self.every:
            self.finish()
        return ", ".join(r["class"] for r in self.rows[i])

    def finish(self):
        from ..cli.localize import write_rows

        self.out.mkdir(parents=True, exist_ok=True)
        write_rows(self.table, [r for i in sorted(self.rows) for r in self.rows[i]])
        self._last = time.monotonic()


KINDS = {"segment": SegmentOutputs, "detect": DetectOutputs, "localize": LocalizeOutputs}


class ErrorTable:
    """``DIR/errors.csv``: ``image,error`` for each image of this run that failed, rewritten
    atomically at each failure; removed at the end of a run without failures."""

    def __init__(self, out: Path, outputs: list[Path]):
        self.path = out / ERRORS_NAME
        clash = [p for p in outputs if p.name.casefold() == ERRORS_NAME]
        if clash:
            raise ValueError(f"the output {clash[0]} has the name of the batch's error table {ERRORS_NAME}; "
                             "rename that image or run it into another --out folder")
        self.rows: list[tuple[str, str]] = []

    def add(self, image: Path, message: str) -> None:
        from ..core.io import atomic_write_text

        self.rows.append((str(image), message))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "error"])
        w.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())

    def finish(self) -> None:
        if not self.rows:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
