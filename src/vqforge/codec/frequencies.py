"""Logits -> integer frequencies: the one deterministic function the encoder and the decoder both use.

The range coder never sees floating-point probabilities. Each coding step's logits (n, K) become integer
frequencies F (n, K) with F >= 1 for every symbol and sum F = 2**PRECISION per row, by this fixed sequence of
float64 numpy operations:

1. z = logits - max(logits)                 (per row)
2. p = exp(z) / sum(exp(z))                 (per row)
3. F = 1 + floor(p * (2**PRECISION - K))    (a floor of 1 per symbol: every token stays codable)
4. the remainder 2**PRECISION - sum(F) (0 <= r < K) goes to the first symbol of largest F.

The coder (constriction's `Categorical(perfect=False)`) is then handed `F - 1` as float64 "probabilities". Its
fast quantization gives symbol i the weight floor(cum_i * s) + i ... with scale s = (2**PRECISION - K) / sum(F - 1)
= 1.0 exactly (integers below 2**53 are exact in float64), so the coder's weights are exactly F: what the encoder
codes, what the decoder decodes and what `code_length_bits` counts are the same integers.

Identical logits give identical frequencies on every machine. Logits that differ in the last bit (another CPU's
exp, another thread count's summation order, another library version) may move a floor by one and desynchronise
the decoder; the container's token checksums turn that into an error, never into silently wrong frames.
"""

from __future__ import annotations

import numpy as np
import torch

PRECISION = 24  # constriction's default range coder (32-bit words, 64-bit state) codes with 24-bit probabilities
TOTAL = 1 << PRECISION
MAX_VOCAB = 1 << 20  # a floor of 1 per symbol must leave most of the 2**24 total to the model


class FrequencyError(ValueError):
    """Logits that cannot be turned into frequencies (non-finite values, wrong shape)."""


def logits_to_frequencies(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, K) logits -> (n, K) int64 frequencies, each >= 1, every row summing to exactly 2**PRECISION."""
    z = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    if z.ndim != 2:
        raise FrequencyError(f"logits must be (n, K), got shape {z.shape}")
    n, k = z.shape
    if not 2 <= k <= MAX_VOCAB:
        raise FrequencyError(f"vocabulary size {k} is outside 2..{MAX_VOCAB}")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise FrequencyError("the entropy model produced non-finite logits")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    free = TOTAL - k
    f = np.floor(p * free).astype(np.int64)
    rem = free - f.sum(axis=1)  # (n,) in [0, K): each floor loses < 1
    top = np.argmax(f, axis=1)  # first maximum
    f[np.arange(n), top] += rem
    return f + 1


def coder_weights(freqs: np.ndarray) -> np.ndarray:
    """What constriction's Categorical(perfect=False) is given: F - 1 as float64 (see the module doc)."""
    return (freqs - 1).astype(np.float64)


def code_length_bits(freqs: np.ndarray, symbols: np.ndarray) -> float:
    """-sum log2(F[symbol] / 2**PRECISION): the ideal code length of `symbols` under these exact frequencies."""
    picked = freqs[np.arange(len(symbols)), symbols].astype(np.float64)
    return float(PRECISION * len(symbols) - np.log2(picked).sum())
