"""Code assignment, the inner loop of every nearest-neighbour quantizer: squared distances to a (K, C) codebook,
the nearest code per vector, and the per-code counts and sums that EMA updates and k-means use.

Distances are float32 at full matmul precision (see `nearest_code`); large batches go in row chunks so that the
(N, K) matrix stays bounded.
"""

from __future__ import annotations

import contextlib

import torch

# rows per chunk when building (chunk, K) distance matrices, to bound memory on large batches
_CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(num_codes: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(num_codes, 1))


def squared_distances(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, C), (K, C) -> (N, K) squared distances ||z||² + ||e||² − 2 z·e (taming-transformers' formula, op order)."""
    return (
        torch.sum(z_flat**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z_flat, codebook.t())
    )


@contextlib.contextmanager
def _full_fp32_matmul():
    """float32 matmuls at full precision (no TF32 / reduced-precision kernels) inside, the caller's setting after."""
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def nearest_code(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row for each row of `z_flat`: (N, C), (K, C) -> (N,) int64.

    Always float32 with autocast off (bf16 distances pick wrong codes) and at full float32 matmul precision, also
    after `torch.set_float32_matmul_precision("high")` (TF32 keeps a 10-bit mantissa, which changes argmins). Ties go
    to the lowest index (torch.argmin), as in taming-transformers. Large batches are processed in row chunks so the
    (N, K) matrix stays bounded.
    """
    with torch.no_grad(), torch.autocast(device_type=z_flat.device.type, enabled=False), _full_fp32_matmul():
        z = z_flat.float()
        e = codebook.float()
        rows = _chunk_rows(e.shape[0])
        if z.shape[0] <= rows:
            return torch.argmin(squared_distances(z, e), dim=1)
        return torch.cat([torch.argmin(squared_distances(c, e), dim=1) for c in z.split(rows)])


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(N,) int64 -> (K,) float32 number of rows assigned to each code."""
    return torch.bincount(indices.reshape(-1), minlength=num_codes).float()


def code_sums(indices: torch.Tensor, z_flat: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Σ of the rows of `z_flat` assigned to each code, i.e. onehotᵀ z: (N,), (N, C) -> (K, C) float32.

    O(N·C) (a one-hot matmul would be another distance-sized GEMM, O(N·K·C)): `index_add_`, or, when
    `torch.use_deterministic_algorithms(True)` is on, a stable sort by code then a per-code segment sum, whose
    summation order does not depend on the device's scheduling (GPU `index_add_` adds with atomics).
    """
    z = z_flat.detach().float()
    idx = indices.reshape(-1)
    if torch.are_deterministic_algorithms_enabled():
        order = torch.argsort(idx, stable=True)
        lengths = torch.bincount(idx, minlength=num_codes)
        return torch.segment_reduce(z[order], "sum", lengths=lengths, axis=0, unsafe=True, initial=0.0)
    return z.new_zeros(num_codes, z.shape[1]).index_add_(0, idx, z)
