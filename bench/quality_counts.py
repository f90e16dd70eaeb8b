"""What limits held-out codebook usage: analysis of the per-code counts that `bench/quality.py --save-counts` keeps.

For each counts file (OUT/counts/NAME-stepS.npz; `counts` over coffee and chelsea, `counts_more` with the more
held-out photos too) it prints:
- usage on all N counted tokens, and on a random half and quarter of them (binomial thinning of the counts, seed 0):
  how usage grows with the number of held-out tokens;
- perplexity and the share of the 10 most frequent codes (how far the held-out code distribution is from uniform);
- FSQ: each channel's distribution over its levels; LFQ: each bit's P(bit = 1); and for both, the usage and perplexity
  the same per-channel distributions would give on N tokens if the channels were independent: when that is far
  above the measured usage, the limit is the dependence between channels (the codes the images actually need), not
  the spread of each channel.

    python bench/quality_counts.py bench/results/quality/patch-3000/counts/*-step3000.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FSQ_LEVELS = {512: [8, 8, 8], 16384: [8, 8, 8, 8, 4]}  # bench/quality.py's rows


def _independent(marginals: list[np.ndarray], n: int) -> tuple[float, float]:
    """Expected usage on n tokens and perplexity of the product of the per-channel distributions."""
    p = marginals[0]
    for m in marginals[1:]:
        p = np.multiply.outer(p, m)
    p = p.ravel()
    nz = p[p > 0]
    return float((1 - (1 - p) ** n).mean()), float(2 ** (-(nz * np.log2(nz)).sum()))


def analyse(path: Path) -> str:
    data = np.load(path)
    name = path.stem.rsplit("-step", 1)[0]
    out = []
    for key in data.files:
        c = data[key].astype(np.int64)
        n, k = int(c.sum()), c.size
        rng = np.random.default_rng(0)
        thin = {f: float((rng.binomial(c, f) > 0).mean()) for f in (0.25, 0.5)}
        p = c[c > 0] / n
        line = (f"{path.name} [{key}] N = {n:,}: usage {100 * (c > 0).mean():.1f}% (on N/2 {100 * thin[0.5]:.1f}%, "
                f"N/4 {100 * thin[0.25]:.1f}%); perplexity {2 ** (-(p * np.log2(p)).sum()):.0f} of {k:,}; "
                f"10 most frequent codes {100 * np.sort(c)[::-1][:10].sum() / n:.1f}% of tokens")
        marginals = None
        if name.startswith("fsq"):
            levels = FSQ_LEVELS[k]
            t = c.reshape(levels[::-1])  # channel 0 is the least significant digit: the last axis
            marginals = [t.sum(axis=tuple(j for j in range(t.ndim) if j != ax)) / n for ax in range(t.ndim)][::-1]
            line += "\n    per-channel level distribution (channel 0 first): " + " | ".join(
                " ".join(f"{x:.2f}" for x in m) for m in marginals)
        elif name.startswith("lfq"):
            bits = k.bit_length() - 1
            idx = np.arange(k)
            marginals = []
            for b in range(bits):
                p1 = c[((idx >> b) & 1).astype(bool)].sum() / n
                marginals.append(np.array([1 - p1, p1]))
            line += "\n    P(bit = 1), bit 0 first: " + " ".join(f"{m[1]:.2f}" for m in marginals)
        if marginals is not None:
            u, ppl = _independent(marginals[::-1], n)
            line += (f"\n    if the channels were independent with these distributions: usage {100 * u:.1f}%, "
                     f"perplexity {ppl:.0f}")
        out.append(line)
    return "\n".join(out)


def main() -> None:
    for arg in sys.argv[1:]:
        print(analyse(Path(arg)))


if __name__ == "__main__":
    main()
