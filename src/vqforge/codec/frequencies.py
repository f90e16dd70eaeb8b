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


def _checked_logits(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, K) logits as a fresh float64 array (which the caller may overwrite), after the shape/value checks."""
    if isinstance(logits, torch.Tensor):
        z = logits.detach().cpu().numpy()
    else:
        z = np.asarray(logits)
    if z.ndim != 2:
        raise FrequencyError(f"logits must be (n, K), got shape {z.shape}")
    k = z.shape[1]
    if not 2 <= k <= MAX_VOCAB:
        raise FrequencyError(f"vocabulary size {k} is outside 2..{MAX_VOCAB}")
    z = np.array(z, dtype=np.float64, order="C", copy=True)
    if not np.isfinite(z).all():
        raise FrequencyError("the entropy model produced non-finite logits")
    return z


def logits_to_weights(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, K) logits -> (n, K) float64 F - 1: what the coder is given (see the module doc), computed in place.

    The same operations, in the same order and precision, as steps 1-4 of the module doc; the floors and the
    remainder are whole numbers below 2**PRECISION, exact in float64, so F - 1 needs no integer round trip."""
    return probs_to_weights(softmax64(logits))


def softmax64(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, K) logits -> float64 probabilities by steps 1-2 of the module doc (what `logits_to_weights` quantizes)."""
    z = _checked_logits(logits)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def probs_to_weights(p: np.ndarray) -> np.ndarray:
    """(n, K) float64 probabilities (rows summing to 1 up to rounding) -> F - 1 by steps 3-4, in place on `p`.

    The codec's adaptive mixing (`adaptive`) hands its mixed probabilities here; logits go through
    `logits_to_weights`, which is softmax then this."""
    z = p
    n, k = z.shape
    free = TOTAL - k
    z *= free
    np.floor(z, out=z)  # F - 1 before the remainder
    rem = free - z.sum(axis=1)  # (n,) whole numbers in [0, K): each floor loses < 1; sums of integers < 2**53 exact
    if (rem < 0).any():  # only rows summing to more than 1 can get here
        raise FrequencyError("probabilities sum to more than 1")
    z[np.arange(n), np.argmax(z, axis=1)] += rem  # to the first maximum
    return z


def logits_to_frequencies(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, K) logits -> (n, K) int64 frequencies, each >= 1, every row summing to exactly 2**PRECISION."""
    return logits_to_weights(logits).astype(np.int64) + 1


def coder_weights(freqs: np.ndarray) -> np.ndarray:
    """What constriction's Categorical(perfect=False) is given: F - 1 as float64 (see the module doc)."""
    return (freqs - 1).astype(np.float64)


def code_length_bits(freqs: np.ndarray, symbols: np.ndarray) -> float:
    """-sum log2(F[symbol] / 2**PRECISION): the ideal code length of `symbols` under these exact frequencies."""
    picked = freqs[np.arange(len(symbols)), symbols].astype(np.float64)
    return float(PRECISION * len(symbols) - np.log2(picked).sum())


def weights_code_length_bits(weights: np.ndarray, symbols: np.ndarray) -> float:
    """`code_length_bits` from the coder's weights F - 1 (`logits_to_weights`)."""
    picked = weights[np.arange(len(symbols)), symbols] + 1.0
    return float(PRECISION * len(symbols) - np.log2(picked).sum())
