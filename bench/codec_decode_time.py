"""Entropy-decode time of one frame with the few-pass test model ("test-context", tests/codec_models.py).

Times `decode_segment` (range decoder + the model's step logits + the integer-frequency function) per frame for
token grids of 256x256 frames from f4 / f8 / f16 tokenizers (3 residual levels for f4), K = 256, on 2 threads.
The tokens are synthetic (a slowly changing blocky frame): the time does not depend on what the tokens are.
    PYTHONPATH=$PWD/src python bench/codec_decode_time.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import codec_models as cm  # noqa: E402

from vqforge.codec import compress_tokens, decode_segment, read_header  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    k = 256
    for name, (d, h, w) in {"f4 x3 levels": (3, 64, 64), "f8 x1": (1, 32, 32), "f16 x1": (1, 16, 16)}.items():
        g = torch.Generator().manual_seed(0)
        base = torch.randint(0, k, (d, h, w), generator=g)
        frames = torch.stack([torch.where(torch.rand(d, h, w, generator=g) < 0.1,
                                          torch.randint(0, k, (d, h, w), generator=g), base) for _ in range(4)])
        model = cm.ContextModel(k, dim=32, max_depth=d).eval()
        c = compress_tokens(frames, model, bytes(32), k, intra_period=4)
        hd = read_header(c.data)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = decode_segment(c.data, hd, 0, model)
            runs.append((time.perf_counter() - t0) / len(frames))
        assert torch.equal(out, frames)
        print(f"{name}: grid {d}x{h}x{w}, {2 * d} passes/frame, entropy decode per frame: median "
              f"{np.median(runs) * 1000:.0f} ms (runs {', '.join(f'{r * 1000:.0f}' for r in runs)} ms)", flush=True)


if __name__ == "__main__":
    main()
