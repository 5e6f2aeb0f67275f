"""Training pairs from folders: ``images DIR`` + ``masks DIR`` (label TIFFs of the same stems), or
``images DIR`` + an annotation file / folder (COCO, VOC, YOLO, boxes CSV; the readers of
:mod:`napari_cnnvision.core.formats`). A dataset's annotation is complete, so each pair's valid
region is its whole image. numpy only (images are read with the plugin's readers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.axes import InputError
from .pairs import TrainPair
from .plan import TASKS

MASK_SUFFIXES = (".tif", ".tiff")
#: the annotation formats ``--format`` names (the masks folder is ``--masks``)
FORMATS = ("coco", "voc", "yolo", "csv")


def _folder(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"the {what} folder {p} does not exist")
    if not p.is_dir():
        raise InputError(f"the {what} {p} is not a folder")
    return p


def _images(folder: Path) -> list[Path]:
    from ...core.images import expand_inputs

    files = [f for f in expand_inputs([folder]) if not f.name.startswith(".")]
    if not files:
        raise InputError(f"no images (.tif, .png, .jpg, ...) in {folder}")
    return files


def mask_pairs(images, masks) -> list[TrainPair]:
    """Each image of ``images`` with the label TIFF of its stem in ``masks``."""
    from ...core.images import read_image

    img_dir, mask_dir = _folder(images, "images"), _folder(masks, "masks")
    by_stem = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in MASK_SUFFIXES}
    files = _images(img_dir)
    missing = [f.name for f in files if f.stem not in by_stem]
    if missing:
        raise InputError(f"{len(missing)} image(s) have no mask TIFF of the same name in {mask_dir} "
                         f"(e.g. {missing[0]})")
    pairs = []
    for f in files:
        image, labels = read_image(f), read_image(by_stem[f.stem])
        if labels.ndim == 3 and labels.shape[-1] in (3, 4):
            raise InputError(f"the mask {by_stem[f.stem].name} is a colour image; masks are label images "
                             "(one integer per object)")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.mod(labels, 1) == 0):
                raise InputError(f"the mask {by_stem[f.stem].name} holds non-integer values; masks are label images")
            labels = labels.astype(np.int32)
        pairs.append(TrainPair(image, labels=labels, valid="all", name=f.name))
    return pairs


def annotation_pairs(task: str, images, annotations, fmt: str | None = None) -> list[TrainPair]:
    """Each annotated image of ``images`` with its boxes (detection / localization) or its instance
    masks (segmentation: COCO polygons / RLE) from ``annotations``."""
    from ...core.formats.annotations import detect_format, find_image, index_images
    from ...core.formats.annotations import read_annotations
    from ...core.formats.voc import AnnotationError
    from ...core.images import read_image

    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown annotation format {fmt!r}; one of {', '.join(FORMATS)}")
    img_dir = _folder(images, "images")
    src = Path(annotations)
    if not src.exists():
        raise InputError(f"the annotations {src} do not exist")
    try:
        found, _ = detect_format(src)
        if fmt is not None and found != fmt:
            raise InputError(f"{src} holds {found} annotations, not {fmt}")
        ds = read_annotations(src, images=img_dir, masks=task == "segment")
    except AnnotationError as e:
        raise InputError(str(e)) from None
    index = index_images(img_dir)
    pairs, unmatched = [], []
    for a in ds.images:
        f = find_image(index, a.image)
        if f is None:
            unmatched.append(a.image)
            continue
        if task == "segment":
            if a.labels is None:
                raise InputError(f"{src} holds no instance masks for {a.image}; segmentation trains on masks "
                                 "(COCO polygons / RLE, or --masks DIR)")
            pairs.append(TrainPair(read_image(f), labels=np.asarray(a.labels), valid="all", name=f.name))
        elif len(a):
            pairs.append(TrainPair(read_image(f), boxes=a.boxes, classes=list(a.classes), frames=a.frame,
                                   valid="all", name=f.name))
    if unmatched:
        raise InputError(f"{len(unmatched)} annotated image(s) are not in {img_dir} (e.g. {unmatched[0]})")
    if not pairs:
        raise InputError(f"{src}: no annotated image to train on")
    return pairs


def folder_pairs(task: str, images, masks=None, annotations=None, fmt: str | None = None) -> list[TrainPair]:
    """The pairs of ``--images DIR`` with exactly one of ``--masks DIR`` / ``--annotations FILE_OR_DIR``."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if (masks is None) == (annotations is None):
        raise InputError("give exactly one of --masks DIR (label TIFFs) and --annotations FILE_OR_DIR")
    if masks is not None:
        if fmt is not None:
            raise InputError("--format goes with --annotations, not with --masks")
        pairs = mask_pairs(images, masks)
        if task != "segment":
            return [_boxes_from_labels(p) for p in pairs]
        return pairs
    return annotation_pairs(task, images, annotations, fmt)


def _boxes_from_labels(p: TrainPair) -> TrainPair:
    """A mask pair as boxes of class "object" (one per labelled object)."""
    from ...core.formats.masks import from_labels

    a = from_labels(p.name, p.labels)
    return TrainPair(p.image, boxes=a.boxes, classes=list(a.classes), valid="all", name=p.name)
