"""Average the weights of several epochs of one StarDist training run (stochastic weight averaging).

    python scripts/average_stardist_weights.py --run runs/nuclei-stardist \
        --weights weights_e040.h5 weights_e050.h5 weights_e060.h5 weights_e070.h5 --out weights_avg.h5

Late epochs of a run at a small learning rate lie close together; their element-wise mean is one
model (same architecture, same ``config.json``) that is usually smoother and scores more steadily on
unseen images than any single epoch, whose val AP wobbles from epoch to epoch. The result is one more
candidate for ``scripts/package_stardist.py --candidates``. Writes atomically into the run folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_cnnvision.core.io import atomic_write_text, atomic_write_with


def average(run: Path, weights: list[str], out: str) -> Path:
    import numpy as np

    from napari_cnnvision.backends.stardist.predict import load_model
    from napari_cnnvision.core.registry import read_card

    if len(weights) < 2:
        raise SystemExit("give at least two weights files to average")
    missing = [w for w in weights if not (run / w).is_file()]
    if missing:
        raise SystemExit(f"not in {run}: {', '.join(missing)}")
    model = load_model(read_card(run, "path"))
    total = None
    for w in weights:
        model.keras_model.load_weights(str(run / w))
        arrays = [np.asarray(a, dtype=np.float64) for a in model.keras_model.get_weights()]
        total = arrays if total is None else [t + a for t, a in zip(total, arrays)]
    model.keras_model.set_weights([(t / len(weights)).astype(np.float32) for t in total])
    atomic_write_with(run / out, lambda tmp: model.keras_model.save_weights(str(tmp)))
    # the run's record of what the file is, for the model card
    info = run / "averaged.json"
    record = json.loads(info.read_text()) if info.is_file() else {}
    record[out] = {"average_of": list(weights)}
    atomic_write_text(info, json.dumps(record, indent=1))
    return run / out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the run's StarDist model folder (config.json + weights)")
    p.add_argument("--weights", nargs="+", required=True, help="weights files of the run, by name")
    p.add_argument("--out", default="weights_avg.h5")
    a = p.parse_args(argv)
    path = average(Path(a.run), a.weights, a.out)
    print(f"wrote {path}: mean of {len(a.weights)} weights files", flush=True)


if __name__ == "__main__":
    sys.exit(main())
