"""Sample images for napari's File > Open Sample menu.

They are the real images that the ``stardist`` package ships. The files are located
without importing ``stardist`` (which would pull in its compiled extensions).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _stardist_image(name: str) -> Path:
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'stardist' package is not installed; its sample images are unavailable")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / name
    if not path.is_file():
        raise FileNotFoundError(f"stardist sample image {name} is missing")
    return path


def load_sample(key: str):
    """Return the sample image ``key`` (nuclei_2d, he_2d, nuclei_3d) as a numpy array."""
    if key == "he_2d":
        from skimage.io import imread

        return imread(_stardist_image("histo.jpg"))
    import tifffile

    return tifffile.imread(_stardist_image({"nuclei_2d": "img2d.tif", "nuclei_3d": "img3d.tif"}[key]))


def nuclei_2d():
    return [(load_sample("nuclei_2d"), {"name": "nuclei_2d"}, "image")]


def he_2d():
    return [(load_sample("he_2d"), {"name": "he_2d", "rgb": True}, "image")]


def nuclei_3d():
    return [(load_sample("nuclei_3d"), {"name": "nuclei_3d"}, "image")]
