"""Sample images for napari's File > Open Sample menu.

The nuclei and H&E images are the real images that the ``stardist`` package ships (located
without importing ``stardist``, which would pull in its compiled extensions); the blood smear
is synthetic, drawn here from a fixed seed (no data file).
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


# --- a synthetic blood smear (no data file: generated, deterministic) -------------------------------------------

_SMEAR_BG = (222.0, 214.0, 218.0)  # pale pinkish grey of an unstained field
_RBC = ((196.0, 142.0, 150.0), (222.0, 196.0, 200.0), (176.0, 118.0, 130.0))  # body, pale centre, rim
_WBC_CYTO = (206.0, 188.0, 214.0)
_WBC_NUCLEUS = (98.0, 82.0, 190.0)
_PLATELET = (128.0, 98.0, 186.0)


def _soft_disc(img, cy, cx, ry, rx, angle=0.0, edge=1.5):
    """The window of ``img`` around a rotated ellipse, the normalized radius in it and the ellipse's
    coverage in 0..1 with a soft edge of about ``edge`` pixels (computed on the window only)."""
    import numpy as np

    h, w = img.shape[:2]
    m = max(ry, rx) * 1.2 + 4 * edge + 2
    y0, y1 = max(int(cy - m), 0), min(int(cy + m) + 1, h)
    x0, x1 = max(int(cx - m), 0), min(int(cx + m) + 1, w)
    yy, xx = np.mgrid[y0:max(y1, y0), x0:max(x1, x0)].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
    r = np.sqrt(u * u + v * v)
    cover = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * min(rx, ry) / edge, -50, 50)))
    return img[y0:y1, x0:x1], r, cover


def _paint(window, cover, colour):
    import numpy as np

    window += cover[..., None] * (np.asarray(colour, np.float32) - window)


def blood_smear_image(height: int = 480, width: int = 640, seed: int = 7):
    """A synthetic RGB (uint8) blood smear: pale red discs with a lighter centre (red blood cells),
    a few larger cells with a purple lobed nucleus (white blood cells) and small purple dots
    (platelets) on a pale pinkish background. The same image for the same arguments."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = _SMEAR_BG
    shade = ndi.zoom(rng.normal(0, 4, (height // 40 + 2, width // 40 + 2)), 40, order=3)[:height, :width]
    img += shade[..., None].astype(np.float32)  # uneven illumination
    scale = min(height / 480, width / 640)
    centres: list[tuple[float, float, float]] = []

    def place(radius, min_gap, margin=-0.2, tries=200):
        for _ in range(tries):
            cy = rng.uniform(margin * radius, height - margin * radius)
            cx = rng.uniform(margin * radius, width - margin * radius)
            if all(np.hypot(cy - y, cx - x) >= min_gap * (radius + r) for y, x, r in centres):
                centres.append((cy, cx, radius))
                return cy, cx, radius
        return None

    wbcs = [p for p in (place(rng.uniform(78, 92) * scale, 0.95, margin=0.6) for _ in range(2)) if p]
    rbcs = [p for p in (place(rng.uniform(44, 54) * scale, 0.82) for _ in range(40)) if p]
    for cy, cx, r in rbcs:  # red blood cells: body, darker rim, pale centre (biconcave disc)
        win, rr, cover = _soft_disc(img, cy, cx, r * rng.uniform(0.88, 1.0), r, rng.uniform(0, np.pi), edge=1.2)
        _paint(win, cover * 0.92, np.asarray(_RBC[0], np.float32) + rng.normal(0, 4, 3).astype(np.float32))
        _paint(win, np.exp(-((rr - 0.86) / 0.09) ** 2) * cover * 0.55, _RBC[2])
        _paint(win, 0.8 / (1.0 + np.exp(np.clip((rr - rng.uniform(0.38, 0.5)) / 0.06, -50, 50))), _RBC[1])
    for cy, cx, r in wbcs:  # white blood cells: pale granular cytoplasm, 3-4 lobes of a purple nucleus
        win, _, cover = _soft_disc(img, cy, cx, r * rng.uniform(0.9, 1.0), r, rng.uniform(0, np.pi), edge=2.0)
        _paint(win, cover * 0.95, _WBC_CYTO)
        for _ in range(int(rng.integers(3, 5))):
            a, d, lr = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.4) * r, rng.uniform(0.24, 0.32) * r
            win, _, lc = _soft_disc(img, cy + d * np.sin(a), cx + d * np.cos(a), lr * rng.uniform(0.75, 1), lr,
                                    rng.uniform(0, np.pi), edge=1.5)
            _paint(win, lc * 0.95, _WBC_NUCLEUS)
    for _ in range(int(rng.integers(3, 6))):  # platelets: small purple dots (2-3 granules) in the gaps
        p = place(rng.uniform(13, 18) * scale, 0.6)
        if p:
            for _ in range(int(rng.integers(2, 4))):
                a, d, gr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.35) * p[2], rng.uniform(0.55, 0.75) * p[2]
                win, _, cover = _soft_disc(img, p[0] + d * np.sin(a), p[1] + d * np.cos(a), gr * rng.uniform(0.7, 1),
                                           gr, rng.uniform(0, np.pi), edge=1.0)
                _paint(win, cover * 0.85, _PLATELET)
    img = ndi.gaussian_filter(img, (1.2, 1.2, 0))
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def blood_smear():
    return [(blood_smear_image(), {"name": "blood_smear", "rgb": True}, "image")]
