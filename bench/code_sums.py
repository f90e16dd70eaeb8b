"""Per-code sums of assigned vectors (the EMA update's onehotᵀz and k-means' centroid sums): the one-hot matmul
vqforge used before against `quantizers.assign.code_sums` (index_add_, and the sort + segment sum it uses under
`torch.use_deterministic_algorithms(True)`).

Same indices and vectors for every method, measured in one run, alternating, median of --repeats; results agree to
float32 tolerance (checked here too).

    PYTHONPATH=src python bench/code_sums.py [--codes 16384 --rows 8192 --dim 256] [--device cpu|cuda]

The default sizes are the review's case (K = 16384, N = 8192 = a batch of 8 at f16 and 512², C = 256).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqforge.quantizers.assign import code_sums


def one_hot_sums(indices: torch.Tensor, z: torch.Tensor, num_codes: int, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """The previous implementation: chunked onehotᵀz, O(N·K·C)."""
    out = torch.zeros(num_codes, z.shape[1], device=z.device)
    rows = max(1, chunk_elements // num_codes)
    for idx, zc in zip(indices.split(rows), z.split(rows)):
        out += torch.nn.functional.one_hot(idx, num_codes).float().t() @ zc
    return out


def deterministic_sums(indices: torch.Tensor, z: torch.Tensor, num_codes: int) -> torch.Tensor:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return code_sums(indices, z, num_codes)
    finally:
        torch.use_deterministic_algorithms(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, a.codes, (a.rows,), generator=g).to(a.device)
    z = torch.randn(a.rows, a.dim, generator=g).to(a.device)
    methods = {"one_hot_matmul": one_hot_sums, "index_add": code_sums, "sort_segment_sum": deterministic_sums}
    ref = one_hot_sums(idx, z, a.codes)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(a.repeats):
        for name, fn in methods.items():  # alternating
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(idx, z, a.codes)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    print(f"K={a.codes} N={a.rows} C={a.dim} device={a.device} threads={torch.get_num_threads()}")
    for name, ts in times.items():
        print(f"  {name:18s} median {statistics.median(ts) * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()
