"""Readers for the labelled datasets used to train and evaluate the shipped models.

A *segmentation dataset* is a folder with ``images/<id>.tif``, ``masks/<id>.tif`` and
``splits/<split>.txt`` (one id per line), the layout of the DSB2018 folders in the
project's shared data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset folder is missing or malformed."""


@dataclass
class SegmentationSplit:
    ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


def split_ids(root: str | Path, split: str) -> list[str]:
    path = Path(root) / "splits" / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"no split list {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_segmentation_split(root: str | Path, split: str, limit: int | None = None) -> SegmentationSplit:
    import tifffile

    root = Path(root)
    ids = split_ids(root, split)
    if limit is not None:
        ids = ids[:limit]
    images, masks = [], []
    for i in ids:
        img_path, mask_path = root / "images" / f"{i}.tif", root / "masks" / f"{i}.tif"
        if not img_path.is_file() or not mask_path.is_file():
            raise DatasetError(f"image or mask missing for id {i!r} in {root}")
        images.append(tifffile.imread(img_path))
        masks.append(tifffile.imread(mask_path))
    return SegmentationSplit(ids, images, masks)
