"""Codebook maintenance for nearest-neighbour quantizers (VQ and EMA): k-means initialisation and dead-code restarts.

Both features are off by default. Their state (the k-means "done" flag, the per-code steps-since-used counters) is
registered as buffers only when the feature is on, so a quantizer with maintenance off has exactly
taming-transformers' state-dict keys and loads its checkpoints strictly.

Randomness follows the run seed: k-means seeding draws from the global CPU torch generator (so the initial codebook
does not depend on the device), restart samples from the generator of the encoder outputs' device (the trainer
checkpoints both). Under DDP every rank runs the same computation (keeping the ranks' RNG streams in step) and then
rank 0's result is broadcast, so the codebook stays identical on every rank.

Restarts never read the device from the host: each training forward draws a candidate row for every code and writes
it where the code is dead (`torch.where`), so the number of dead codes is never needed on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import distributed
from .assign import code_counts, code_sums, nearest_code

if TYPE_CHECKING:
    from ..config.schema import QuantizerConfig


@dataclass(frozen=True)
class MaintenanceConfig:
    """Which maintenance a quantizer runs (the `kmeans_*` and `restart_unused_steps` fields of QuantizerConfig)."""

    kmeans_init: bool = False
    kmeans_iters: int = 10
    kmeans_batches: int = 1  # the first this-many training forwards feed the k-means initialisation
    restart_unused_steps: int = 0  # restart codes unused for this many training forwards; 0 = off
    restart_min_uses: int = 1  # a code counts as used in a forward when it takes at least this many vectors

    @property
    def enabled(self) -> bool:
        return self.kmeans_init or self.restart_unused_steps > 0

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> MaintenanceConfig:
        return cls(
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            kmeans_batches=cfg.kmeans_batches,
            restart_unused_steps=cfg.restart_unused_steps,
            restart_min_uses=cfg.restart_min_uses,
        )


def kmeans_plusplus(data: torch.Tensor, num_codes: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is a data row drawn with probability
    proportional to its squared distance from the nearest centre so far. (N, C) -> (K, C).

    The K uniforms come from the global CPU torch generator up front and rows are picked by inverse CDF on the data's
    device, so the result depends on the run seed only, not on the device, and needs no host sync per centre.
    """
    n = data.shape[0]
    u = torch.rand(num_codes).to(data.device)  # (K,)
    first = (u[:1] * n).long().clamp_max(n - 1)  # (1,)
    centroids = data.new_empty(num_codes, data.shape[1])
    centroids[0] = data[first][0]
    d2 = ((data - centroids[0]) ** 2).sum(dim=1)  # (N,) squared distance to the nearest centre
    for i in range(1, num_codes):
        cdf = torch.cumsum(d2, dim=0)
        # right=True skips rows of zero weight (already centres); if all weights are 0 the clamp picks the last row
        pick = torch.searchsorted(cdf, u[i : i + 1] * cdf[-1], right=True).clamp_max(n - 1)  # (1,)
        centroids[i] = data[pick][0]
        d2 = torch.minimum(d2, ((data - centroids[i]) ** 2).sum(dim=1))
    return centroids


def kmeans(data: torch.Tensor, num_codes: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding then `iters` Lloyd iterations on (N, C) data -> centroids (K, C), cluster sizes (K,).

    Randomness comes from the global CPU torch generator (see kmeans_plusplus). A cluster that becomes empty keeps
    its previous centroid.
    """
    with torch.no_grad(), torch.autocast(device_type=data.device.type, enabled=False):
        data = data.detach().float()
        centroids = kmeans_plusplus(data, num_codes)  # (K, C)
        for _ in range(iters):
            assign = nearest_code(data, centroids)
            counts = code_counts(assign, num_codes)
            sums = code_sums(assign, data, num_codes)
            centroids = torch.where((counts > 0)[:, None], sums / counts.clamp_min(1.0)[:, None], centroids)
        counts = code_counts(nearest_code(data, centroids), num_codes)
    return centroids, counts


@dataclass
class CodeUpdate:
    """New codebook rows chosen by maintenance: row k of `codes` replaces code k where `mask[k]` (every row where
    `mask` is None); the other rows of `codes` are ignored.

    `counts` (K,) is the number of vectors each new code stands for per batch; EMA codebooks use it to set
    cluster_size/embed_avg consistently."""

    codes: torch.Tensor  # (K, C)
    mask: torch.Tensor | None  # (K,) bool, or None for the whole codebook
    counts: torch.Tensor  # (K,)

    def write(self, target: torch.Tensor, new: torch.Tensor) -> None:
        """target[k] = new[k] for the selected rows k, in place, with no host read (no boolean indexing).

        The write goes through `.data`, which autograd does not version: the forward that chose these rows may have
        saved the codebook for its backward (cosine codes normalise it). That backward stays exact: a restarted code
        was not used in this forward, so its rows get zero gradient whatever they hold, and every other row keeps its
        values; k-means writes (mask None) come before any use of the codebook in the forward."""
        data = target.data
        if self.mask is None:
            data.copy_(new)
        else:
            data.copy_(torch.where(self.mask.view(-1, *(1,) * (data.dim() - 1)), new, data))


# k-means initialisation waits for at least this many encoder vectors per code (over all ranks)
KMEANS_MIN_ROWS_PER_CODE = 4


class CodebookMaintenance(nn.Module):
    """Runs k-means initialisation and dead-code restarts for one codebook of K codes.

    The owning quantizer calls `kmeans_step` before assigning codes in a training forward and `restart_step` after,
    and writes the returned `CodeUpdate` into its codebook.
    """

    def __init__(self, num_codes: int, cfg: MaintenanceConfig):
        super().__init__()
        self.num_codes = num_codes
        self.cfg = cfg
        if cfg.kmeans_init:
            self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.bool))
        if cfg.restart_unused_steps > 0:
            self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        # encoder outputs collected for k-means so far, one (rows, C) tensor per training forward (every rank's rows,
        # the same list on every rank). Not in the state dict (a model's keys do not depend on when it was saved):
        # the trainer checkpoints it as its own part (train/parts.py, KMeansCollection) while collection runs
        self._collected: list[torch.Tensor] = []
        self._kmeans_known_done = False  # host-side mirror of kmeans_done, avoids a device sync every step
        # k-means of these codebooks must be done before this one collects (residual levels: level i's inputs are
        # what level i-1's codebook leaves, meaningful only once that codebook holds its k-means codes). A tuple,
        # not a submodule: no state-dict keys.
        self._waits_for: tuple[CodebookMaintenance, ...] = ()

    def wait_for(self, other: CodebookMaintenance) -> None:
        """Collect k-means data only once `other`'s k-means initialisation is done."""
        self._waits_for = (*self._waits_for, other)

    def kmeans_pending(self) -> bool:
        """True while k-means initialisation is on and has not run yet (one device sync, then the host mirror)."""
        if not self.cfg.kmeans_init or self._kmeans_known_done:
            return False
        self._kmeans_known_done = bool(self.kmeans_done)
        return not self._kmeans_known_done

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._kmeans_known_done = False
        self._collected = []

    # host-side state a skipped training step puts back (train/snapshot.py); collected tensors are never modified
    def host_state(self) -> tuple[bool, list[torch.Tensor]]:
        return self._kmeans_known_done, list(self._collected)

    def load_host_state(self, state: tuple[bool, list[torch.Tensor]]) -> None:
        self._kmeans_known_done, collected = state
        self._collected = list(collected)

    # the batches collected so far, for a checkpoint taken during collection (train/parts.py)
    def collected_batches(self) -> list[torch.Tensor]:
        return list(self._collected)

    def load_collected_batches(self, batches: list[torch.Tensor]) -> None:
        """Continue a collection a checkpoint interrupted; call after the state dict is loaded (which empties it)."""
        if batches and not self.cfg.kmeans_init:
            raise ValueError("k-means batches given to a codebook without kmeans_init")
        self._collected = [b.to(self._device()).float() for b in batches]

    def _device(self) -> torch.device:
        buf = next(self.buffers(), None)
        return buf.device if buf is not None else torch.device("cpu")

    def kmeans_step(self, z_flat: torch.Tensor) -> CodeUpdate | None:
        """Collect (N, C) encoder outputs of every rank; once at least kmeans_batches calls and at least
        KMEANS_MIN_ROWS_PER_CODE x K vectors are collected, return the k-means codebook (once per run). Nothing is
        collected while a codebook this one waits for (`wait_for`) is not initialised yet."""
        if not self.kmeans_pending() or any(m.kmeans_pending() for m in self._waits_for):
            return None
        # every rank's vectors (identical list on all ranks): k-means sees all the data the run has
        self._collected.append(distributed.all_gather_rows(z_flat.detach().float()))
        rows = sum(c.shape[0] for c in self._collected)
        # fewer vectors than a few per code leave codes duplicated (k-means++ runs out of distinct rows): keep
        # collecting batches past kmeans_batches until there are enough
        if len(self._collected) < self.cfg.kmeans_batches or rows < KMEANS_MIN_ROWS_PER_CODE * self.num_codes:
            return None
        batches = len(self._collected)
        data = torch.cat(self._collected)
        self._collected = []
        centroids, counts = kmeans(data, self.num_codes, self.cfg.kmeans_iters)
        # counts per training batch summed over ranks: the scale of an EMA codebook's all-reduced cluster sizes
        counts = counts / batches
        distributed.broadcast(centroids)
        distributed.broadcast(counts)
        self.kmeans_done.fill_(True)
        self._kmeans_known_done = True
        return CodeUpdate(codes=centroids, mask=None, counts=counts)

    def restart_step(self, counts: torch.Tensor, samples: torch.Tensor) -> CodeUpdate | None:
        """Count steps since each code was used (counts (K,) of this step, summed over ranks here; used = at least
        `restart_min_uses` vectors); codes unused for `restart_unused_steps` steps get random rows of `samples` (N, C),
        this step's encoder outputs, drawn without replacement while N >= K.

        Every call draws a candidate for every code and returns them with the dead codes as the mask, so deciding
        whether any code is dead needs no host read; under DDP the candidates (K, C) are broadcast from rank 0 each
        step, as large as the EMA statistics that are all-reduced each step anyway."""
        steps = self.cfg.restart_unused_steps
        if steps <= 0:
            return None
        used = distributed.all_reduce_sum(counts.detach().float().clone()) >= self.cfg.restart_min_uses
        self.steps_unused.add_(1).masked_fill_(used, 0)
        dead = self.steps_unused >= steps  # (K,)
        n = samples.shape[0]
        order = torch.randperm(n, device=samples.device)
        pick = order[torch.arange(self.num_codes, device=samples.device) % n]  # (K,): distinct rows while N >= K
        codes = samples.detach().float()[pick]  # (K, C)
        distributed.broadcast(codes)
        self.steps_unused.masked_fill_(dead, 0)
        return CodeUpdate(codes=codes, mask=dead, counts=torch.ones(self.num_codes, device=codes.device))
