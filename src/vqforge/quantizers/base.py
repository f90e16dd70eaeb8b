"""What every quantizer returns and offers, and the shared machinery of the nearest-neighbour quantizers.

- `Quantizer`, `QuantizerOutput`: the interface of every quantizer.
- index checks (`check_index_range`, `single_index_map`) before a lookup of indices that come from outside.
- layout helpers (`flatten_channels_last`, `unflatten_channels_last`), `straight_through`, `code_stats`; the
  sequence / video / channel-last layouts of `Quantizer.__call__` are in layout.py.
- `CodebookQuantizer`: base of the quantizers that pick the nearest row of a (K, C) codebook (VQ, EMA, residual
  levels): float32 assignment (assign.py), the straight-through output, usage statistics and the codebook
  maintenance hooks (maintenance.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .assign import code_counts, nearest_code
from .layout import Layout
from .maintenance import CodebookMaintenance, CodeUpdate, MaintenanceConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, C, H, W), straight-through: gradients reach the encoder
    indices: torch.Tensor  # (B, H, W) int64, or (B, D, H, W) for residual quantizers with depth D
    loss: torch.Tensor  # scalar: codebook + commitment (+ KL for Gumbel); zeros for EMA codebook terms
    # detached scalars for logging: "usage" (fraction of codes used in this batch), "perplexity", ...
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Base class. Subclasses implement forward(z) -> QuantizerOutput and codes_from_indices on (B, C, H, W) maps;
    calling a quantizer also takes sequences and video, channel-first or channel-last (layout.py)."""

    num_codes: int  # K, codebook size (per level)
    embed_dim: int  # C, channels of the input and of the quantized output
    depth: int = 1  # D, number of residual levels

    def __init__(self, num_codes: int, embed_dim: int) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.embed_dim = embed_dim

    def __call__(self, z: torch.Tensor, *, channel_last: bool = False) -> QuantizerOutput:
        """Quantize (B, C, H, W), (B, C, N) or (B, C, T, H, W) features, or with channel_last=True (B, H, W, C),
        (B, N, C) or (B, T, H, W, C). `quantized` comes back in the input's layout, indices as layout.py says."""
        if z.dim() == 4 and not channel_last:
            return super().__call__(z)
        layout = Layout.of_features(z, channel_last)
        out = super().__call__(layout.to_map(z))
        return QuantizerOutput(layout.from_map(out.quantized), layout.indices_from_map(out.indices), out.loss,
                               out.stats)

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) or (B, D', H, W) with D' <= depth (a prefix) -> (B, C, H, W) quantized vectors."""
        raise NotImplementedError

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int] | None) -> torch.Tensor:
        """taming-transformers' signature: flat indices (N,) -> codes (N, C); with shape = (B, H, W, C) (N = B·H·W)
        -> (B, C, H, W), as taming's quantizers return them (its Net2NetTransformer decodes sampled tokens this way).
        One-level quantizers only."""
        if self.depth != 1 or getattr(self, "num_subspaces", 1) != 1:
            raise ValueError(f"{type(self).__name__} has several index levels; get_codebook_entry takes one level "
                             "of flat indices: use codes_from_indices with (B, L, H, W) indices")
        flat = indices.reshape(-1)
        if shape is None:
            codes = self.codes_from_indices(flat.view(1, 1, -1))  # (1, C, 1, N)
            return codes[0, :, 0].t()
        b, h, w, c = shape
        if b * h * w != flat.numel():
            raise ValueError(f"shape {tuple(shape)} holds {b * h * w} positions, but {flat.numel()} indices were given")
        codes = self.codes_from_indices(flat.view(b, h, w))
        if codes.shape[1] != c:
            raise ValueError(f"shape {tuple(shape)} says {c} channels, but the codes have {codes.shape[1]}")
        return codes

    def get_output_from_indices(self, indices: torch.Tensor, *, channel_last: bool = False,
                                spatial_dims: int = 2) -> torch.Tensor:
        """`codes_from_indices` for any layout the forward returns: indices with `spatial_dims` position axes
        (1: (B, N), 2: (B, H, W), 3: (B, T, H, W)), plus a level axis at dim 1 (or last, channel_last) for
        multi-level quantizers -> codes in the matching feature layout, e.g. (B, N, C) for channel-last sequences.
        With the defaults it is codes_from_indices itself."""
        layout, levels = Layout.of_indices(indices, spatial_dims, channel_last)
        if layout.is_image_map:
            return self.codes_from_indices(indices)
        return layout.from_map(self.codes_from_indices(layout.indices_to_map(indices, levels)))

    def set_step(self, step: int) -> None:
        """Called by the trainer before every generator step with the global step (Gumbel temperature schedule,
        random-depth draws); codebook maintenance counts training forwards itself and does not use it."""


def check_index_range(indices: torch.Tensor, num_codes: int) -> None:
    """Indices from outside (a file, a caller) must be integers in [0, K): checked before a lookup, where an
    out-of-range index would be a device-side assert on CUDA that poisons the process."""
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
    if indices.numel() == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= num_codes:
        raise ValueError(f"indices out of range: found values in [{lo}, {hi}], but the codebook has {num_codes} codes "
                         f"(valid: 0..{num_codes - 1}); the indices were made by another model or the file is damaged")


def single_index_map(indices: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, int, int, int]:
    """(B, H, W) or (B, 1, H, W) indices of a one-map quantizer, checked -> (flat (B·H·W,), B, H, W)."""
    if indices.dim() == 4 and indices.shape[1] == 1:
        indices = indices[:, 0]
    if indices.dim() != 3:
        raise ValueError(f"expected indices of shape (B, H, W), got {tuple(indices.shape)}")
    check_index_range(indices, num_codes)
    b, h, w = indices.shape
    return indices.reshape(-1), b, h, w


def usage_and_perplexity(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,) code histogram -> (fraction of codes used, exp of the entropy of the code distribution), 0-d tensors in
    the histogram's floating dtype (float32 for integer counts). Perplexity is K for uniform use, 1 for one code (and
    for an empty histogram)."""
    counts = counts.detach()
    if not counts.is_floating_point():
        counts = counts.float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -torch.special.xlogy(p, p).sum()
    return (counts > 0).to(counts.dtype).mean(), entropy.exp()


def code_stats(counts: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """Detached float32 "usage" and "perplexity" (see usage_and_perplexity) of a (K,) code histogram."""
    usage, perplexity = usage_and_perplexity(counts.float())
    return {f"{prefix}usage": usage, f"{prefix}perplexity": perplexity}


def level_code_stats(counts: list[torch.Tensor], tag: str, overall: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stats of a multi-level quantizer: `{tag}{i}/usage`, `{tag}{i}/perplexity` for each level's (K,) histogram,
    then the unprefixed ones of `overall` (all levels' codes together)."""
    stats: dict[str, torch.Tensor] = {}
    for i, cnt in enumerate(counts):
        stats.update(code_stats(cnt, prefix=f"{tag}{i}/"))
    stats.update(code_stats(overall))
    return stats


def stack_index_maps(indices: list[torch.Tensor], b: int, h: int, w: int) -> torch.Tensor:
    """One (B·H·W,) index vector per level -> (B, L, H, W)."""
    return torch.stack([i.view(b, h, w) for i in indices], dim=1)


def sum_level_codes(indices: torch.Tensor, depth: int,
                    lookup: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Residual decode: (B, D', H, W) with 1 <= D' <= depth (or (B, H, W) for D' = 1) -> Σ_i lookup(i, indices of
    level i) as (B, C, H, W). Sums in level order from zero, as the residual forwards do, so an eval forward's output
    equals the decode of its indices bit for bit. lookup(i, (N,) int64) -> (N, C) codes of level i."""
    if indices.dim() == 3:
        indices = indices[:, None]
    if indices.dim() != 4 or not 1 <= indices.shape[1] <= depth:
        raise ValueError(f"expected indices (B, D', H, W) with 1 <= D' <= {depth}, got {tuple(indices.shape)}")
    b, d, h, w = indices.shape
    total = None
    for i in range(d):
        codes = lookup(i, indices[:, i].reshape(-1))  # (N, C)
        total = torch.zeros_like(codes) + codes if total is None else total + codes
    return unflatten_channels_last(total, b, h, w)


def flatten_channels_last(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B·H·W, C), rows in (b, h, w) order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflatten_channels_last(x: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B·H·W, C) -> (B, C, H, W)."""
    return x.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def straight_through(codes: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Value of `codes` exactly, gradient of the identity to `z` (codes get no gradient through this path).

    `codes + (z - z)` keeps the codebook values bit-exact (z - z is exactly 0), so in eval mode the quantized output
    equals `codes_from_indices(indices)`; taming's `z + (codes - z)` can differ from the codes in the last bit.
    """
    return codes.detach() + (z - z.detach())


@dataclass
class FlatQuantized:
    """One level of nearest-neighbour quantization of flattened vectors."""

    codes: torch.Tensor  # (N, C) float32, selected codebook rows (with gradient to the codebook where it is trained)
    indices: torch.Tensor  # (N,) int64
    loss: torch.Tensor  # scalar float32
    counts: torch.Tensor  # (K,) float32, this process's code histogram


class CodebookQuantizer(Quantizer):
    """Base of quantizers that pick the nearest row of a (K, C) codebook.

    Subclasses provide `embedding` (whose `weight` is the codebook), `_write_codes`, and their loss (`_level_loss`,
    the commitment term by default) and (EMA) their update inside `quantize_flat`.

    Two options of the code space (off by default; set by the constructor), as in ViT-VQGAN / Improved VQGAN:
    - factorised codes: a codebook of codebook_dim < embed_dim columns, `project_in` (embed_dim -> codebook_dim)
      before the assignment and `project_out` back after it (state-dict keys `project_in.*`, `project_out.*`);
    - cosine similarity: inputs and codebook rows are l2-normalised before the assignment, so the nearest code is
      the one of largest cosine similarity and the codes (and the loss) live on the unit sphere.
    """

    embed_dim: int
    maintenance: CodebookMaintenance | None

    def __init__(self, num_codes: int, embed_dim: int, *, codebook_dim: int | None = None, cosine: bool = False) -> None:
        """K codes for `embed_dim`-channel inputs and the code space every nearest-neighbour quantizer shares
        (factorised codes of `codebook_dim` columns, cosine codes). The subclass then creates its codebook of
        `code_width` columns, and last its maintenance (`_init_maintenance`: its keys come after the codebook's)."""
        super().__init__(num_codes, embed_dim)
        self.cosine = cosine
        self.code_width = embed_dim if codebook_dim is None else codebook_dim  # the codebook's columns
        if self.code_width < 1:
            raise ValueError(f"codebook_dim must be >= 1, got {codebook_dim}")
        self.project_in: nn.Linear | None = None
        self.project_out: nn.Linear | None = None
        if self.code_width != embed_dim:
            self.project_in = nn.Linear(embed_dim, self.code_width)
            self.project_out = nn.Linear(self.code_width, embed_dim)
        self.maintenance = None

    def _init_maintenance(self, maintenance: MaintenanceConfig | None) -> None:
        if maintenance is not None and maintenance.enabled:
            self.maintenance = CodebookMaintenance(self.num_codes, maintenance)
        # otherwise a plain attribute (None), not a submodule: no extra state-dict keys when maintenance is off

    @property
    def codebook_dim(self) -> int:
        """Width of the codebook rows (embed_dim unless the codes are factorised)."""
        return int(self.codebook.shape[1])

    def to_code_space(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim) -> (N, codebook_dim): project_in, then l2-normalise with cosine codes."""
        h = self.project_in(z_flat) if self.project_in is not None else z_flat
        return F.normalize(h, dim=-1) if self.cosine else h

    def from_code_space(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, codebook_dim) -> (N, embed_dim): project_out when the codes are factorised."""
        return self.project_out(codes) if self.project_out is not None else codes

    def code_table(self) -> torch.Tensor:
        """(K, codebook_dim) codes as assigned and returned: the codebook, rows l2-normalised with cosine codes."""
        return F.normalize(self.codebook.float(), dim=-1) if self.cosine else self.codebook

    @property
    def codebook(self) -> torch.Tensor:
        """(K, C) codebook: `embedding.weight`, the key every nearest-neighbour quantizer here stores it under."""
        return self.embedding.weight

    def in_place_parameters(self) -> list[torch.Tensor]:
        """Parameters a training forward overwrites (k-means, restarts): a skipped step restores them."""
        return [self.codebook] if self.maintenance is not None else []

    def _write_codes(self, update: CodeUpdate) -> None:
        """Overwrite codebook rows chosen by maintenance."""
        raise NotImplementedError

    def _level_loss(self, codes: torch.Tensor, z_flat: torch.Tensor) -> torch.Tensor:
        """The commitment term only, beta·mse(sg[codes], z): the loss of codebooks that gradients do not train (EMA);
        a gradient-trained codebook adds its codebook term (vq.py)."""
        return self.beta * torch.mean((codes.detach() - z_flat) ** 2)

    # maintenance hooks, also called by ResidualVectorQuantizer for a shared codebook
    def maintain_before(self, z_flat: torch.Tensor) -> None:
        if self.maintenance is not None and self.training:
            update = self.maintenance.kmeans_step(z_flat)
            if update is not None:
                self._write_codes(update)

    def maintain_after(self, counts: torch.Tensor, samples: torch.Tensor) -> None:
        if self.maintenance is not None and self.training:
            update = self.maintenance.restart_step(counts, samples)
            if update is not None:
                self._write_codes(update)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) int64 -> (..., codebook_dim) float32 codes (rows of code_table)."""
        return F.embedding(indices, self.code_table()).float()

    def quantize_flat(self, z_flat: torch.Tensor, *, shared: bool = False) -> FlatQuantized:
        """Quantize (N, C) float32 vectors; in training mode also update (EMA) and maintain (k-means, restarts) the
        codebook. `shared`: the codebook serves several residual levels, so assign only: the caller updates and
        maintains it once per step from all levels' statistics."""
        if not shared:
            self.maintain_before(z_flat)
        indices = nearest_code(z_flat, self.code_table())  # (N,)
        codes = self.lookup(indices)  # (N, C)
        loss = self._level_loss(codes, z_flat)
        counts = code_counts(indices, self.num_codes)
        if not shared:
            self._update_codebook(indices, counts, z_flat)
            self.maintain_after(counts, z_flat)
        return FlatQuantized(codes=codes, indices=indices, loss=loss, counts=counts)

    def _update_codebook(self, indices: torch.Tensor, counts: torch.Tensor, z_flat: torch.Tensor) -> None:
        """Non-gradient codebook update (EMA); nothing for gradient-trained codebooks."""

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, C, H, W) -> quantized (B, C, H, W) in z's dtype, indices (B, H, W), loss, stats."""
        b, c, h, w = z.shape
        if c != self.embed_dim:
            raise ValueError(f"{type(self).__name__} expects {self.embed_dim} channels, got shape {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_code = self.to_code_space(flatten_channels_last(z).float())  # (B·H·W, codebook_dim)
            out = self.quantize_flat(z_code)
            quantized = self.from_code_space(straight_through(out.codes, z_code))
        quantized = unflatten_channels_last(quantized, b, h, w).to(z.dtype)
        return QuantizerOutput(quantized, out.indices.view(b, h, w), out.loss, code_stats(out.counts))

    def codes_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, C, H, W) float32 codebook vectors."""
        flat, b, h, w = single_index_map(indices, self.num_codes)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return unflatten_channels_last(self.from_code_space(self.lookup(flat)), b, h, w)
