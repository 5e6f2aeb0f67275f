"""Reading images from disk (TIFF via tifffile, other formats via scikit-image)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"}


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from skimage.io import imread

        img = np.asarray(imread(path))
        if img.ndim == 3 and img.shape[-1] == 4 and (img[..., 3] == img[..., 3].flat[0]).all():
            img = img[..., :3]  # drop a constant alpha channel
        return img
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def expand_inputs(items) -> list[Path]:
    """Files and folders (their images, sorted) -> list of image files, each file once (a file
    named twice, or given and also inside a given folder, keeps its first place)."""
    out, seen = [], set()
    for item in items:
        p = Path(item)
        found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        for q in found:
            key = q.resolve()
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out
