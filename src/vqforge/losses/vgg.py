"""VGG16 feature stack for LPIPS, on plain torch, and the search for its ImageNet weights.

The layer indices equal torchvision's `vgg16().features`, so torchvision's weight file
(`vgg16-397923af.pth`, keys `features.N.weight` / `features.N.bias`) loads without renaming.

Where the weights come from, first hit wins (`load_vgg16_weights`):
  1. an explicit path (`loss.vgg_path`),
  2. the environment variable `VQFORGE_VGG16`,
  3. torch's hub cache, `torch.hub.get_dir()/checkpoints/vgg16-397923af.pth` (where torchvision keeps it),
  4. a one-time download from torchvision's URL into that cache.
If none works, a ConfigError says how to provide the file, so the failure happens when the objective is built,
before training step 0.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
# the full SHA-256 of torchvision's file. torchvision names its files after the first 8 hex digits of their SHA-256
# (397923af); the full digest is the Git LFS object id of a published copy of vgg16-397923af.pth, and agrees with it
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
VGG16_ENV = "VQFORGE_VGG16"
DOWNLOAD_TIMEOUT_S = 60.0

# torchvision's "D" configuration up to relu5_3 ("M" = 2x2 max pool); the final pool (index 30) is never used
_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_CHANNELS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
TAP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """`features.0` .. `features.29` of VGG16; forward returns the five LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _LAYOUT:
            if isinstance(v, str):  # "M"
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # in-place ReLU is safe here: a conv's backward needs its input, not its output, and the tapped
                # ReLU outputs are only read (by the next conv / pool), never modified afterwards
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> relu1_2 (N, 64, H, W), relu2_2 (N, 128, H/2, W/2), relu3_3 (N, 256, H/4, W/4),
        relu4_3 (N, 512, H/8, W/8), relu5_3 (N, 512, H/16, W/16)."""
        taps: list[torch.Tensor] = []
        h = x
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAP_INDICES:
                taps.append(h)
        return taps


def vgg16_param_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every weight VGG16Features needs (torchvision key names)."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for idx, cout in zip(CONV_INDICES, CONV_CHANNELS):
        shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{idx}.bias"] = (cout,)
        cin = cout
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# finding the weight file


def hub_cache_path() -> Path:
    """Where torchvision (and vqforge) keep the downloaded file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _how_to_provide() -> str:
    return (
        f"download {VGG16_URL} (on a machine with internet access) and either set loss.vgg_path to the file, "
        f"set the environment variable {VGG16_ENV} to its path, or copy it to {hub_cache_path()}; "
        "or set loss.perceptual_weight: 0 to train without the perceptual (LPIPS) loss"
    )


def download_file(url: str, dst: Path) -> None:
    """Download `url` to `dst` atomically (temp file + rename). Raises on any failure.

    Kept separate and small so tests can replace it (no network in tests).
    """
    import urllib.request

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (the VGG file is about 530 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def check_vgg16_hash(path: Path) -> None:
    """Raise ConfigError unless the file's SHA-256 is VGG16_SHA256 (all 64 hex digits)."""
    digest = sha256_of_file(path)
    if digest != VGG16_SHA256:
        raise ConfigError(
            "loss.vgg_path",
            f"{path} is not torchvision's VGG16 weight file: its SHA-256 is {digest}, expected {VGG16_SHA256}",
            f"use the original {VGG16_FILENAME} from {VGG16_URL} (a partial or different download does not work)",
        )


def _existing_file(value: str, where: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_file():
        raise ConfigError(
            where,
            f"the VGG16 weight file {str(p)!r} does not exist",
            f"point {where} at {VGG16_FILENAME}, or unset it to use the torch hub cache ({hub_cache_path()})",
        )
    return p


def resolve_vgg16_path(path: str | None) -> Path:
    """Find the VGG16 weight file: explicit path, then $VQFORGE_VGG16, then the hub cache, then download.

    An explicit path or environment variable that names a missing file is an error (not skipped), because the user
    asked for that file. The download is tried once, into the hub cache; a failure raises ConfigError.
    """
    if path:
        return _existing_file(path, "loss.vgg_path")
    env = os.environ.get(VGG16_ENV)
    if env:
        return _existing_file(env, f"${VGG16_ENV}")
    cached = hub_cache_path()
    if cached.is_file():
        return cached
    try:
        download_file(VGG16_URL, cached)
    except Exception as e:  # any failure (offline, HTTP error, disk full) ends in the same advice
        raise ConfigError(
            "loss.vgg_path",
            "the perceptual loss needs VGG16 ImageNet weights; none were given, none are cached, "
            f"and downloading {VGG16_URL} failed ({type(e).__name__}: {e})",
            _how_to_provide(),
        ) from e
    try:
        check_vgg16_hash(cached)
    except ConfigError:
        cached.unlink(missing_ok=True)  # never leave a bad download where the next run would trust it
        raise
    return cached


def load_vgg16_weights(path: str | None) -> dict[str, torch.Tensor]:
    """Resolve, hash-check and load torchvision's VGG16 weights -> `features.N.weight/bias` state dict.

    `classifier.*` keys are ignored; any other key, a missing conv or a wrong shape is a ConfigError.
    Read with vqforge's restricted unpickler (the one checkpoints use): no pickled code runs, no unbounded allocation.
    """
    from ..safe_pickle import load_checkpoint

    file = resolve_vgg16_path(path)
    check_vgg16_hash(file)
    try:
        raw = load_checkpoint(file)
    except CheckpointError as e:
        raise ConfigError("loss.vgg_path", f"{file} could not be read as a PyTorch state dict ({e})",
                          f"download {VGG16_URL} again") from e
    if not isinstance(raw, dict):
        raise ConfigError("loss.vgg_path", f"{file} holds a {type(raw).__name__}, not a state dict",
                          f"use torchvision's {VGG16_FILENAME}")
    expected = vgg16_param_shapes()
    unexpected = sorted(k for k in raw if k not in expected and not k.startswith("classifier."))
    missing = sorted(k for k in expected if k not in raw)
    if unexpected or missing:
        raise ConfigError(
            "loss.vgg_path",
            f"{file} does not have torchvision's VGG16 keys (missing: {missing[:5]}, unexpected: {unexpected[:5]})",
            f"use torchvision's {VGG16_FILENAME}",
        )
    out: dict[str, torch.Tensor] = {}
    for k, shape in expected.items():
        t = raw[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ConfigError("loss.vgg_path", f"{file}: {k} has shape {got}, expected {shape}",
                              f"use torchvision's {VGG16_FILENAME} (VGG16, not another VGG)")
        out[k] = t.float()
    return out
