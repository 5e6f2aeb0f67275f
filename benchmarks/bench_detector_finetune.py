"""Detector fine-tuning on the user's own class set, end to end: from napari layers and from a COCO file.

The user has 10 BCCD train images (``../shared/data/bccd``, VOC) and annotates only the classes
they care about -- by default ``WBC`` and ``Platelets`` (``--classes``), not the base model's
``RBC`` -- so the class set differs from the base ``bloodcells-yolo`` (RBC, WBC, Platelets) and
its class head is rebuilt for it (the rows of the classes the base knows by name are kept; the card's
``training.class_head`` says which). The images are fully annotated for those classes (every WBC and
platelet has its box), so each whole image is a "fully annotated" region and its red cells are
background. ``--rename OLD=NEW`` renames a class on the user's side (a class unknown to the base).

1. **From napari layers**: a real viewer (under Xvfb when there is no display) holds the 10
   images as one RGB stack (an Image layer), the boxes as a Shapes layer of rectangles with a
   ``class`` feature (one per box, on its frame) and a "fully annotated" Shapes layer of one
   whole-frame rectangle per image; the real Train widget (``widgets/train.py``: task detect,
   base ``--base``, the widget's defaults unless ``--epochs`` / ``--minutes``) trains in the
   compute worker exactly as when the user presses Train.
2. **From a COCO file**: the same 10 images' annotations written as COCO by ``core/formats``,
   then ``napari-cnnvision train detect --base ... --images DIR --annotations FILE --format coco``.

Reported: val mAP@0.5 (COCO, pycocotools) on the 87 BCCD val images restricted to the user's
classes -- of the base model (its predictions of the other classes dropped, the rest mapped by
name) and of each fine-tuned model -- and the training time. Models go to a temporary user
folder (``NAPARI_CNNVISION_DATA_DIR``); nothing is written to the real one.

    .venv/bin/python benchmarks/bench_detector_finetune.py [--n-train 10] [--classes WBC,Platelets]
        [--rename Platelets=platelet] [--epochs N | --minutes M] [--skip-layers] [--skip-coco] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_util import ensure_display, machine_note  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bccd"


def load_split(split: str, n: int | None, keep: list[str], rename: dict):
    """[(id, image, boxes (y0, x0, y1, x1), classes)] of ``split`` with only the ``keep`` classes
    (renamed), boxes of zero area dropped (two such RBC boxes ship with BCCD)."""
    import numpy as np

    from napari_cnnvision.core.formats.annotations import read_annotations
    from napari_cnnvision.core.images import read_image

    ids = [s.strip() for s in (DATA / "splits" / f"{split}.txt").read_text().split() if s.strip()]
    ids = sorted(ids)[:n] if n else sorted(ids)
    ds = read_annotations(DATA / "annotations", images=DATA / "images", masks=False)
    by = {a.stem: a for a in ds.images}
    out = []
    for i in ids:
        a = by[i]
        sel = np.array([c in keep for c in a.classes], bool)
        b = a.boxes[sel] if len(a.boxes) else np.zeros((0, 4))
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        cls = [rename.get(c, c) for c, s in zip(a.classes, sel) if s]
        out.append((i, read_image(DATA / "images" / f"{i}.jpg"), b[ok], [c for c, k in zip(cls, ok) if k]))
    return out


def evaluate(card, val, classes, pool) -> dict:
    """COCO mAP@0.5 on ``val`` for ``classes`` (by name); the model's other classes are dropped.
    Predictions run in the compute worker (score >= 0.01), the metric here (numpy + pycocotools)."""
    import numpy as np

    from napari_cnnvision.backends.detection.evaluate import coco_map
    from napari_cnnvision.backends.dispatch import run_model

    preds, truths = [], []
    t0 = time.perf_counter()
    for _, img, b, c in val:
        r = run_model(img, card, pool=pool, task="detect", score_thresh=0.01)
        names = list(r.class_names)
        ids = np.asarray(r.class_ids, np.int64)
        keep = np.array([names[k] in classes for k in ids], bool) if len(ids) else np.zeros(0, bool)
        mapped = np.array([classes.index(names[k]) for k in ids[keep]], np.int64)
        preds.append((np.asarray(r.boxes)[keep], mapped, np.asarray(r.scores)[keep]))
        truths.append((b, np.array([classes.index(x) for x in c], np.int64)))
    m = coco_map(preds, truths, classes, shapes=[img.shape[:2] for _, img, _, _ in val])
    return {"map50": m["map50"], "map": m["map"], "ap50": m["ap50"], "n_truth": m["n_truth"],
            "seconds": time.perf_counter() - t0}


def train_from_layers(train, base: str, name: str, epochs: int | None, minutes: float | None) -> dict:
    """The Train widget in a real viewer: Image stack + Shapes boxes with 'class' + whole-frame
    'fully annotated' rectangles -> a fine-tuned detector (the job runs in the compute worker)."""
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_cnnvision.widgets.train import MINUTES, TrainWidget

    viewer = napari.Viewer(show=False)
    stack = np.stack([img for _, img, _, _ in train])
    viewer.add_image(stack, name="bccd10", rgb=True)
    rects, classes, whole = [], [], []
    h, w = stack.shape[1:3]
    for t, (_, _, b, c) in enumerate(train):
        for (y0, x0, y1, x1), k in zip(b, c):
            rects.append(np.array([[t, y0, x0], [t, y0, x1], [t, y1, x1], [t, y1, x0]], float))
            classes.append(k)
        whole.append(np.array([[t, 0, 0], [t, 0, w], [t, h, w], [t, h, 0]], float))
    boxes = viewer.add_shapes(rects, shape_type="rectangle", features={"class": classes}, name="my boxes",
                              edge_color="yellow", face_color="transparent")
    done = viewer.add_shapes(whole, shape_type="rectangle", name="fully annotated", face_color="transparent")
    wdg = TrainWidget(viewer)
    viewer.window.add_dock_widget(wdg, name="Train")
    wdg.task.value = "detect"
    wdg.base.value = base
    wdg.image.value = viewer.layers["bccd10"]
    wdg.target.value = boxes
    wdg.region.value = done
    wdg.name.value = name
    if minutes:
        wdg.budget.value = MINUTES
        wdg.minutes.value = minutes
    elif epochs:
        wdg.epochs.value = epochs
    app = QApplication.instance()
    t0 = time.perf_counter()
    wdg.run()
    if not wdg.runner.running:
        raise SystemExit(f"the Train widget refused: {wdg.status.value}")
    while wdg.runner.running:
        app.processEvents()
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    print(f"  widget {wdg.split.value}")  # set once the request is built (in a thread, after the press)
    print(f"  widget status: {wdg.status.value}")
    if not wdg.status.value.startswith("saved model"):
        raise SystemExit("the layers run failed")
    card = wdg.registry.get(name)
    out = {"wall_s": wall, "epochs": len(wdg.plot.epochs), "card": card}
    viewer.close()
    return out


def train_from_coco(train, base: str, name: str, epochs: int | None, minutes: float | None, tmp: Path) -> dict:
    """The 10 images' annotations as a COCO file (core/formats), then the ``train detect`` command."""
    from napari_cnnvision.core.formats.annotations import AnnotationSet, ImageAnnotations
    from napari_cnnvision.core.formats.coco import write_coco

    images = tmp / "images"
    images.mkdir()
    anns = []
    for i, img, b, c in train:
        os.symlink(DATA / "images" / f"{i}.jpg", images / f"{i}.jpg")
        anns.append(ImageAnnotations(f"{i}.jpg", img.shape[:2], b, c))
    classes = list(dict.fromkeys(k for _, _, _, c in train for k in c))
    coco = write_coco(AnnotationSet(anns, classes), tmp / "annotations.json")
    cmd = [str(ROOT / ".venv" / "bin" / "napari-cnnvision"), "train", "detect", "--base", base, "--name", name,
           "--images", str(images), "--annotations", str(coco), "--format", "coco", "--json", "--quiet"]
    if minutes:
        cmd += ["--minutes", str(minutes)]
    elif epochs:
        cmd += ["--epochs", str(epochs)]
    print("  $ napari-cnnvision " + " ".join(cmd[1:]).replace(str(tmp), "$TMP"))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"train detect failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    from napari_cnnvision.core.registry import ModelRegistry

    res = {}
    try:
        res = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        pass
    return {"wall_s": wall, "epochs": res.get("epochs_run"), "card": ModelRegistry().get(name), "cli": res}


def describe(label, run, m, before):
    t = (run["card"].training or {})
    secs = t.get("training_seconds", t.get("seconds"))
    ap = ", ".join(f"{k} {v:.3f}" for k, v in m["ap50"].items())
    print(f"{label}: val mAP@0.5 {m['map50']:.3f} (gain {m['map50'] - before['map50']:+.3f}); AP@0.5 {ap}; "
          f"mAP@[.5:.95] {m['map']:.3f}; {run['epochs']} epochs, training {secs} s in the job, "
          f"{run['wall_s']:.1f} s wall from Train to the registered model")
    if t.get("class_head"):
        h = t["class_head"]
        print(f"  class head: from the base {h.get('kept')}, new {h.get('new')}, dropped {h.get('dropped')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="bloodcells-yolo")
    ap.add_argument("--n-train", type=int, default=10)
    ap.add_argument("--classes", default="WBC,Platelets", help="the user's classes (BCCD names)")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                    help="rename a class on the user's side (e.g. Platelets=platelet)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None, help="default: the widget's / CLI's derived default")
    g.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-coco", action="store_true")
    ap.add_argument("--skip-before", action="store_true", help="do not evaluate the base model (it does not change)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"no BCCD data at {DATA}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-det-ft-"))
    os.environ["NAPARI_CNNVISION_DATA_DIR"] = str(tmp / "user-data")  # the fine-tuned models go here
    keep = [c.strip() for c in a.classes.split(",") if c.strip()]
    rename = dict(r.split("=", 1) for r in a.rename)
    user_classes = [rename.get(c, c) for c in keep]
    ensure_display()
    import numpy as np

    from napari_cnnvision.core.registry import ModelRegistry
    from napari_cnnvision.worker import WorkerPool

    print("== detector fine-tuning on the user's class set (BCCD) ==")
    print(f"machine: {machine_note()}")
    train = load_split("train", a.n_train, keep, rename)
    val = load_split("val", None, keep, rename)
    base = ModelRegistry().get(a.base)
    n_tr = {c: sum(cs.count(c) for _, _, _, cs in train) for c in user_classes}
    n_va = {c: sum(cs.count(c) for _, _, _, cs in val) for c in user_classes}
    print(f"base {base.name}: classes {base.classes}; the user's: {user_classes}"
          + (f" (renamed {rename})" if rename else ""))
    print(f"train: {len(train)} images ({', '.join(i for i, *_ in train[:3])}, ...), boxes {n_tr}; "
          f"val: {len(val)} images, boxes {n_va}")
    out = {"base": base.name, "classes": user_classes, "n_train": len(train), "train_boxes": n_tr}
    pool = WorkerPool()
    try:
        # the base model: its classes mapped to the user's by name (a renamed class has no match: AP 0)
        base_card = base
        if rename:
            missing = [c for c in user_classes if c not in (base.classes or [])]
            print(f"  base model has no class {missing}: their AP is 0 before fine-tuning")
        before = ({"map50": float("nan"), "map": float("nan"), "ap50": {c: float("nan") for c in user_classes},
                   "n_truth": sum(n_va.values()), "seconds": 0.0} if a.skip_before
                  else evaluate(base_card, val, user_classes, pool))
        ap50 = ", ".join(f"{k} {v:.3f}" for k, v in before["ap50"].items())
        print(f"before ({base.name}, classes mapped by name): val mAP@0.5 {before['map50']:.3f}; AP@0.5 {ap50}; "
              f"mAP@[.5:.95] {before['map']:.3f} ({before['n_truth']} val boxes, {before['seconds']:.1f} s)")
        out["before"] = before
        if not a.skip_layers:
            print("1. from napari layers (Train widget, real viewer):")
            run = train_from_layers(train, base.name, "bccd-ft-layers", a.epochs, a.minutes)
            m = evaluate(run["card"], val, user_classes, pool)
            describe("after (layers)", run, m, before)
            out["layers"] = {"after": m, "epochs": run["epochs"], "wall_s": run["wall_s"],
                             "training_s": (run["card"].training or {}).get("seconds")}
        if not a.skip_coco:
            print("2. from a COCO file (napari-cnnvision train detect --format coco):")
            run = train_from_coco(train, base.name, "bccd-ft-coco", a.epochs, a.minutes, tmp)
            m = evaluate(run["card"], val, user_classes, pool)
            describe("after (COCO)", run, m, before)
            out["coco"] = {"after": m, "epochs": run["epochs"], "wall_s": run["wall_s"],
                           "training_s": (run["card"].training or {}).get("seconds")}
    finally:
        pool.shutdown()
    if a.json:
        print(json.dumps(out, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
