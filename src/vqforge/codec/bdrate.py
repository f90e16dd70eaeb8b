"""Bjøntegaard delta rate (BD-rate): the average rate difference of two rate-distortion curves at equal quality.

For each curve, log10(rate) is interpolated as a function of quality (PSNR in dB, or any score where higher is
better); both interpolants are integrated over the quality interval where the curves overlap, and
BD-rate = 10 ** ((integral_test - integral_anchor) / (overlap length)) - 1, in percent. Negative: the test codec
needs less rate than the anchor for the same quality.

Interpolation: "pchip" (piecewise cubic Hermite, monotone; needs >= 2 points; the method of later VCEG/JVET
reports) or "cubic" (one cubic polynomial fit, the original VCEG-M33 method; needs >= 4 points).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np


class BDRateError(ValueError):
    """The curves do not allow a BD-rate (too few points, no overlap, non-positive rates)."""


def _prepare(rate: Sequence[float], quality: Sequence[float], need: int) -> tuple[np.ndarray, np.ndarray]:
    r, q = np.asarray(rate, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(q)
    r, q = r[ok], q[ok]
    if len(r) < need:
        raise BDRateError(f"need at least {need} finite points per curve, got {len(r)}")
    if (r <= 0).any():
        raise BDRateError("rates must be positive")
    order = np.argsort(q)
    q, lr = q[order], np.log10(r[order])
    if np.any(np.diff(q) <= 0):
        raise BDRateError("quality values of a curve must be distinct")
    return q, lr


def _integral(q: np.ndarray, lr: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "cubic":
        p = np.polyint(np.polyfit(q, lr, 3))
        return float(np.polyval(p, hi) - np.polyval(p, lo))
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(q, lr).integrate(lo, hi))


def bd_rate(anchor_rate: Sequence[float], anchor_quality: Sequence[float], test_rate: Sequence[float],
            test_quality: Sequence[float], method: Literal["pchip", "cubic"] = "pchip") -> float:
    """BD-rate of `test` against `anchor`, in percent."""
    if method not in ("pchip", "cubic"):
        raise ValueError(f"unknown method {method!r}; use 'pchip' or 'cubic'")
    need = 4 if method == "cubic" else 2
    qa, la = _prepare(anchor_rate, anchor_quality, need)
    qt, lt = _prepare(test_rate, test_quality, need)
    lo, hi = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if hi <= lo:
        raise BDRateError(f"the curves do not overlap in quality (anchor {qa[0]:.3g}..{qa[-1]:.3g}, "
                          f"test {qt[0]:.3g}..{qt[-1]:.3g})")
    diff = (_integral(qt, lt, lo, hi, method) - _integral(qa, la, lo, hi, method)) / (hi - lo)
    return float((10**diff - 1) * 100)
