"""Sample photos for the quickstart: real photographs that scikit-image ships (no download), split by photo.

Only photos whose scikit-image documentation states public domain or CC0 are used. Left out on purpose:
`immunohistochemistry` and `coins` ("no known copyright restrictions" is not a licence), `moon` and
`stereo_motorcycle` (no licence stated in scikit-image), `microaneurysms` (102×102, smaller than a crop's source),
synthetic or drawn images (`colorwheel`, `logo`, `horse`, `text`, `page`, `chessboard`, ...) and images fetched from
the internet on first use (`eagle`, `skin`, `kidney`, ...). The licences below are quoted from the docstrings of
`skimage.data` (scikit-image 0.21 – 0.26); all of these files are in scikit-image's wheel, so loading them needs no
network.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import ConfigError

# Split by photo, so no validation photo is ever seen in training.
SAMPLE_PHOTOS_TRAIN: tuple[str, ...] = ("astronaut", "rocket", "hubble_deep_field", "retina", "camera", "clock",
                                        "brick", "grass", "gravel", "cell")
SAMPLE_PHOTOS_VAL: tuple[str, ...] = ("coffee", "chelsea")
# Each held-out photo is cut into n x n tiles (data.sample_val_tiles, default VAL_TILES); each tile is one validation
# image (resized and centre-cropped like any image), so validation sees 2·n² different crops of the 2 photos.
VAL_TILES = 2

SAMPLE_PHOTO_CREDITS: dict[str, str] = {
    "astronaut": "Eileen Collins, NASA Great Images database; public domain",
    "rocket": "Launch of DSCOVR on Falcon 9, SpaceX; released into the public domain by SpaceX",
    "hubble_deep_field": "Hubble eXtreme Deep Field, NASA (HubbleSite); public domain",
    "retina": "Fundus photograph of a normal left eye, Mikael Häggström (Wikimedia Commons); CC0 1.0",
    "camera": "Gray-level \"camera\" photograph by Lav Varshney; CC0 (grayscale)",
    "clock": "Motion-blurred wall clock by Stefan van der Walt; public domain (grayscale)",
    "brick": "Brick wall, from CC0Textures (Bricks25), perspective-corrected and cropped; CC0 (grayscale)",
    "grass": "Grass, by linolafett on DeviantArt (Grass-01), cropped; CC0 (grayscale)",
    "gravel": "Gravel, from CC0Textures (Gravel04), rescaled and cropped; CC0 (grayscale)",
    "cell": "Cell floating in saline, quantitative phase image by Paul Müller et al.; CC0 (grayscale)",
    "coffee": "Coffee cup by Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0",
    "chelsea": "Chelsea the cat by Stefan van der Walt; CC0",
}

SAMPLE_PHOTO_ATTRIBUTION: str = (
    "The sample photos (`data.source: sample_photos`) are bundled with scikit-image (skimage.data); each is in the "
    "public domain or dedicated to it under CC0:\n"
    + "\n".join(f"- {name} ({'validation' if name in SAMPLE_PHOTOS_VAL else 'training'}): {credit}"
                for name, credit in SAMPLE_PHOTO_CREDITS.items())
    + "\nGrayscale photos are repeated into three channels. Validation uses n x n tiles of each held-out photo "
    "(data.sample_val_tiles, default 2)."
)


def _as_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.stack([a, a, a], axis=-1)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a, dtype=np.uint8)  # (H, W, 3)


@lru_cache(maxsize=1)
def _load() -> dict[str, np.ndarray]:
    try:
        import skimage.data as skdata
    except ImportError as e:
        raise ConfigError("data.source", "sample_photos needs scikit-image, which is not installed",
                          "pip install 'vqforge[samples]' (or scikit-image), or list your own files in data.train") from e
    out = {}
    for name in SAMPLE_PHOTOS_TRAIN + SAMPLE_PHOTOS_VAL:
        a = _as_rgb(getattr(skdata, name)())
        a.setflags(write=False)  # shared between calls
        out[name] = a
    return out


def _tiles(a: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = a.shape[0] // n, a.shape[1] // n
    return [a[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(n) for c in range(n)]


def sample_photo_val_names(tiles: int = VAL_TILES) -> list[str]:
    """Names of the validation images, in order: 'coffee tile 1/4', ... (row-major tiles of each held-out photo)."""
    k = tiles * tiles
    return [f"{n} tile {i + 1}/{k}" for n in SAMPLE_PHOTOS_VAL for i in range(k)]


def sample_photo_split(train_names: list[str] | tuple[str, ...] | None = None, val_tiles: int = VAL_TILES
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train_images, val_images): uint8 (H, W, 3) arrays (read-only): the training photos `train_names` (default
    all 10; `data.sample_photos`), and the 2 held-out photos cut into val_tiles x val_tiles tiles each
    (`data.sample_val_tiles`; 2: 8 validation images). More tiles than the smaller photo has pixels is a
    ConfigError (empty tiles)."""
    photos = _load()
    side = min(min(photos[n].shape[:2]) for n in SAMPLE_PHOTOS_VAL)
    if val_tiles > side:
        raise ConfigError("data.sample_val_tiles", f"{val_tiles} x {val_tiles} tiles of a {side}-pixel held-out photo "
                          "are empty", f"use at most {side} (e.g. 4: 32 crops)")
    val = [t for n in SAMPLE_PHOTOS_VAL for t in _tiles(photos[n], val_tiles)]
    return [photos[n] for n in (train_names or SAMPLE_PHOTOS_TRAIN)], val
