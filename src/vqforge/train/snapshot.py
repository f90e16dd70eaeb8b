"""What a training step may change in place, saved before the step and put back when the step is skipped.

A step whose loss or gradients are not finite is skipped: the optimizer does not step, and everything the forward
passes wrote must be as before the step. That is more than the buffers:

- buffers and frozen parameters (EMA codebooks, BatchNorm running statistics, ActNorm's `initialized`);
- trainable parameters that a forward overwrites (a codebook written by k-means or restarts, ActNorm's data-dependent
  loc/scale): modules list them in `in_place_parameters()`;
- host-side state that is not a tensor (the Python mirrors of `kmeans_done` and ActNorm's `initialized`, the batches
  collected for k-means): modules expose it as `host_state()` / `load_host_state(state)`.

One `StepSnapshot` covers every module a step touches (the generator and, because the generator step runs the
discriminator in train mode, the discriminator too).

The tensors go back without a host sync: `restore_where(skip)` selects, on the device, the saved or the current value
by the step's 0-dim skip flag. Host-side state cannot be selected on the device; it changes only on rare steps
(k-means collecting or running, ActNorm initialising), and `host_changed()` tells the trainer that this step needs
its skip decision on the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _in_place_tensors(module: nn.Module) -> list[torch.Tensor]:
    seen: set[int] = set()
    out: list[torch.Tensor] = []

    def add(t: torch.Tensor) -> None:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)

    for t in module.buffers():
        add(t)
    for p in module.parameters():
        if not p.requires_grad:
            add(p)
    for m in module.modules():
        extra = getattr(m, "in_place_parameters", None)
        if callable(extra):
            for p in extra():
                add(p)
    return out


class StepSnapshot:
    """The in-place state of some modules (None entries are ignored); `restore()` puts it back exactly."""

    def __init__(self, *modules: nn.Module | None) -> None:
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._host: list[tuple[Any, Any]] = []
        for module in modules:
            if module is None:
                continue
            self._tensors += [(t, t.detach().clone()) for t in _in_place_tensors(module)]
            for m in module.modules():
                if callable(getattr(m, "host_state", None)):
                    self._host.append((m, m.host_state()))

    @torch.no_grad()
    def restore(self) -> None:
        """Put everything back (the step is skipped)."""
        for t, saved in self._tensors:
            t.copy_(saved)
        self.restore_host()

    @torch.no_grad()
    def restore_where(self, skip: torch.Tensor) -> None:
        """Put the tensors back where the 0-dim bool `skip` is true, keep them otherwise, decided on the device (no
        host sync). Host-side state is not touched: see `host_changed`."""
        for t, saved in self._tensors:
            t.copy_(torch.where(skip, saved, t))

    def host_changed(self) -> bool:
        """Whether any host-side state differs from the snapshot (then only a host decision can restore it)."""
        return any(not _same_host_state(m.host_state(), state) for m, state in self._host)

    def restore_host(self) -> None:
        for m, state in self._host:
            m.load_host_state(state)


def _same_host_state(a: Any, b: Any) -> bool:
    """Equality of host states, tensors compared by identity (a collected batch is never modified in place)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_host_state(x, y) for x, y in zip(a, b))
    return a == b
