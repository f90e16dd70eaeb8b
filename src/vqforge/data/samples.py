"""Sample photos for the quickstart: real photographs that scikit-image ships (no download), split by photo.

Only photos whose scikit-image documentation states public domain or CC0 are used. Left out on purpose:
`immunohistochemistry` and `coins` ("no known copyright restrictions" is not a licence), synthetic or drawn images
(`colorwheel`, `logo`, `horse`, `text`, `page`, ...) and images fetched from the internet on first use (`eagle`,
`skin`, ...). The licences below are quoted from the docstrings of `skimage.data` (scikit-image 0.21 – 0.26).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import ConfigError

# Split by photo, so no validation photo is ever seen in training.
SAMPLE_PHOTOS_TRAIN: tuple[str, ...] = ("astronaut", "rocket", "hubble_deep_field", "retina", "camera", "clock")
SAMPLE_PHOTOS_VAL: tuple[str, ...] = ("coffee", "chelsea")

SAMPLE_PHOTO_CREDITS: dict[str, str] = {
    "astronaut": "Eileen Collins, NASA Great Images database; public domain",
    "rocket": "Launch of DSCOVR on Falcon 9, SpaceX; released into the public domain by SpaceX",
    "hubble_deep_field": "Hubble eXtreme Deep Field, NASA (HubbleSite); public domain",
    "retina": "Fundus photograph of a normal left eye, Mikael Häggström (Wikimedia Commons); CC0 1.0",
    "camera": "Gray-level \"camera\" photograph by Lav Varshney; CC0 (grayscale)",
    "clock": "Motion-blurred wall clock by Stefan van der Walt; public domain (grayscale)",
    "coffee": "Coffee cup by Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0",
    "chelsea": "Chelsea the cat by Stefan van der Walt; CC0",
}

SAMPLE_PHOTO_ATTRIBUTION: str = (
    "The sample photos (`data.source: sample_photos`) are bundled with scikit-image (skimage.data); each is in the "
    "public domain or dedicated to it under CC0:\n"
    + "\n".join(f"- {name} ({'validation' if name in SAMPLE_PHOTOS_VAL else 'training'}): {credit}"
                for name, credit in SAMPLE_PHOTO_CREDITS.items())
    + "\nGrayscale photos are repeated into three channels."
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


def sample_photo_split() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train_images, val_images): uint8 (H, W, 3) arrays, 6 training and 2 validation photos (read-only)."""
    photos = _load()
    return [photos[n] for n in SAMPLE_PHOTOS_TRAIN], [photos[n] for n in SAMPLE_PHOTOS_VAL]
