"""Usage of FSQ, SimVQ and LFQ on their own, fed well-spread synthetic latents (README "Quantizers", the diagnosis
under the held-out usage table): what each quantizer's math reaches when its inputs are spread, without a network.

N = 100,000 i.i.d. Gaussian latent vectors of std s (eval mode, seed 0, one thread) at K = 16,384: FSQ [8, 8, 8, 8, 4]
and [4]*7, SimVQ (16-d, its initial projection), LFQ (14 bits). Prints the fraction of the K codes used, and what a
code drawn uniformly at random would use on N tokens, 1 − (1 − 1/K)^N.

    PYTHONPATH=src python bench/quantizer_spread.py
"""

from __future__ import annotations

import torch

from vqforge.quantizers.fsq import FSQuantizer
from vqforge.quantizers.lfq import LookupFreeQuantizer
from vqforge.quantizers.simvq import SimVQuantizer


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = 100_000
    cases = [("fsq [8,8,8,8,4]", FSQuantizer([8, 8, 8, 8, 4], 5), 5), ("fsq [4]*7", FSQuantizer([4] * 7, 7), 7),
             ("simvq", SimVQuantizer(16384, 16), 16), ("lfq", LookupFreeQuantizer(16384, 14), 14)]
    print(f"N = {n:,}; uniform code on N: {100 * (1 - (1 - 1 / 16384) ** n):.2f}%")
    for name, q, d in cases:
        q.eval()
        for std in (0.1, 0.5, 1.0, 2.0):
            z = torch.randn(1, d, n // 100, 100) * std
            with torch.no_grad():
                idx = q(z).indices
            used = (torch.bincount(idx.flatten(), minlength=q.num_codes) > 0).float().mean().item()
            print(f"{name:16s} std {std:4}: {100 * used:5.1f}% of {q.num_codes:,} codes used", flush=True)


if __name__ == "__main__":
    main()
