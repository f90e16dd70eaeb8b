"""Kernel Inception Distance (Bińkowski et al. 2018) on InceptionV3 pool features (`fid.InceptionFeatures`).

KID is the unbiased estimate of the squared MMD between the two feature distributions with the polynomial kernel
k(x, y) = (x . y / d + 1)^3 (d = feature dimension). Unlike FID it has an unbiased estimator, so it is meaningful
for the few dozen frames of a test clip. With more than `subset_size` samples per side, the estimate is the mean over
`subsets` random subsets of that size (a fixed seed), as the reference implementation does; otherwise it is computed
once on all samples.
"""

from __future__ import annotations

import torch


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid_from_features(fa: torch.Tensor, fb: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> float:
    """KID between two (N, D) feature sets (float64 arithmetic)."""
    a, b = fa.to(torch.float64), fb.to(torch.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    if len(a) <= subset_size and len(b) <= subset_size:
        return _mmd2_unbiased(a, b)
    g = torch.Generator().manual_seed(seed)
    m = min(len(a), len(b), subset_size)
    vals = [_mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:m]], b[torch.randperm(len(b), generator=g)[:m]])
            for _ in range(subsets)]
    return float(sum(vals) / len(vals))
