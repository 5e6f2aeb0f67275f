"""COCO file <-> Shapes layer data: a 5,000-box COCO file read into a Shapes layer's data and written back.

    python benchmarks/bench_annotations_io.py [--boxes 5000] [--images 50] [--repeats 5] [--napari]

1. **read**: ``io_napari`` reader on the file -> LayerDataTuples (file parse + boxes + features);
2. **write**: the Shapes writer on that layer data -> COCO JSON (atomic write included);
3. with ``--napari`` also the napari Shapes layer built from the data and its ``as_layer_data_tuple()``
   (napari's own work, not counted in the goal).

Goal: median < 1 s each way (excluding napari's own drawing).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_util import ensure_display, machine_note, median  # noqa: E402


def make_coco(path: Path, n_boxes: int, n_images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    classes = ["RBC", "white cell é", "Platelets"]
    images = [{"id": i + 1, "file_name": f"img_{i:03d}.png", "width": 640, "height": 480} for i in range(n_images)]
    xy = rng.uniform(0, 590, (n_boxes, 2))
    wh = rng.uniform(4, 40, (n_boxes, 2))
    anns = [{"id": k + 1, "image_id": int(k % n_images) + 1, "category_id": int(rng.integers(1, 4)),
             "bbox": [float(xy[k, 0]), float(xy[k, 1]) * 0.7, float(wh[k, 0]), float(wh[k, 1])],
             "area": float(wh[k, 0] * wh[k, 1]), "iscrowd": 0, "score": float(rng.uniform())}
            for k in range(n_boxes)]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=5000)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--napari", action="store_true", help="also time napari's Shapes layer (needs a display)")
    args = ap.parse_args(argv)
    from napari_cnnvision.io_napari import get_reader, write_shapes_coco

    print(machine_note())
    if args.napari:
        ensure_display()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "annotations.json"
        make_coco(src, args.boxes, args.images)
        reads, writes, layer_s = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            layers = get_reader(str(src))(str(src))
            reads.append(time.perf_counter() - t)
            shapes = next(ld for ld in layers if ld[2] == "shapes")
            data, kw = shapes[0], dict(shapes[1])
            if args.napari:
                from napari.layers import Shapes

                t = time.perf_counter()
                layer = Shapes(data, **kw)
                data, kw, _ = layer.as_layer_data_tuple()
                layer_s.append(time.perf_counter() - t)
            else:
                kw["shape_type"] = ["rectangle"] * len(data)
            t = time.perf_counter()
            write_shapes_coco(str(Path(tmp) / "out.json"), [(data, kw, "shapes")])
            writes.append(time.perf_counter() - t)
        n = len(json.loads((Path(tmp) / "out.json").read_text())["annotations"])
        assert n == args.boxes, n
    print(f"{args.boxes} boxes over {args.images} images, {args.repeats} repeats")
    print(f"read COCO -> Shapes layer data: median {median(reads):.3f} s (min {min(reads):.3f})")
    print(f"Shapes layer data -> COCO file: median {median(writes):.3f} s (min {min(writes):.3f})")
    if layer_s:
        print(f"napari Shapes layer build + as_layer_data_tuple (not in the goal): median {median(layer_s):.3f} s")
    ok = median(reads) < 1 and median(writes) < 1
    print(f"goal: < 1 s each way: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
