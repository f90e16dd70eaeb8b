"""A training step between log intervals reads nothing back from the device (review C6, issue 14).

On an accelerator every read of a device value on the host (`.item()`, `bool(t)`, `int(t)`, `.tolist()`, boolean
indexing, which needs `nonzero`) waits for the whole queue of kernels. This machine has no GPU, so the test counts the
operations that would be such reads while the trainer's step runs (data loading excluded: it is host work by design),
with the features that used to read every step turned on: k-means initialisation, dead-code restarts, the GAN.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_config
from vqforge.quantizers import maintenance as maintenance_mod
from vqforge.train.build import build_run

aten = torch.ops.aten
# ops whose result is a host value computed from device data
_SCALAR_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                 aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    """Counts host reads of tensor values while active; `paused` excludes host-side work such as data loading."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            if func in _SCALAR_READS:
                self.reads.append(str(func))
            elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
                # boolean-mask indexing computes the selected positions on the host
                if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None):
                    self.reads.append(f"{func} with a boolean mask")
        return func(*args, **kwargs)


def _count_reads_per_step(t, first_counted_step: int, monkeypatch) -> dict[int, list[str]]:
    """Wrap the trainer's step so that steps >= first_counted_step run under HostReads; `.tolist()`/`.numpy()` (host
    reads that do not go through the dispatcher on CPU) are counted too."""
    mode = HostReads()
    per_step: dict[int, list[str]] = {}
    real_step, real_next = t.train_step, t._next_inputs

    def next_inputs():
        mode.paused = True
        try:
            return real_next()
        finally:
            mode.paused = False

    for name in ("tolist", "numpy"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            if mode.active and not mode.paused:
                mode.reads.append(f"Tensor.{_name}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    mode.active = False

    def step():
        s = t.counters.step
        if s < first_counted_step:
            return real_step()
        mode.reads = []
        mode.active = True
        with mode:
            res = real_step()
        mode.active = False
        per_step[s] = list(mode.reads)
        return res

    t.train_step, t._next_inputs = step, next_inputs
    return per_step


@pytest.mark.parametrize("use_gan", [False, True], ids=["no_gan", "gan"])
def test_steps_between_log_intervals_read_nothing_back(tmp_path, monkeypatch, use_gan):
    cfg = tiny_config(
        model={"family": "patch", "n_embed": 64, "embed_dim": 8,
               "patch": {"factor": 4, "channels": 32, "num_blocks": 1},
               "quantizer": {"rvq_levels": 2, "shared_codebook": True, "kmeans_init": True, "kmeans_batches": 2,
                             "restart_unused_steps": 2}},
        loss={"use_gan": use_gan, "disc_start": 0},
        data={"batch_size": 4},
        train={"num_steps": 9, "save_interval": 100, "validation_interval": 100, "ema_decay": 0.9},
        log={"every": 100},
    )
    run = build_run(cfg, tmp_path / "run")
    t = run.trainer
    restarted = []
    real_restart = maintenance_mod.CodebookMaintenance.restart_step

    def recording_restart(self, counts, samples):
        update = real_restart(self, counts, samples)
        if update is not None:
            restarted.append(update.mask.clone())  # summed after training: no read inside the counted steps
        return update

    monkeypatch.setattr(maintenance_mod.CodebookMaintenance, "restart_step", recording_restart)
    # k-means collects 2 batches (steps 0, 1) and runs at step 1: those steps read on purpose (host-side state)
    per_step = _count_reads_per_step(t, first_counted_step=3, monkeypatch=monkeypatch)
    try:
        t.fit()
    finally:
        run.logger.close()
    assert sorted(per_step) == list(range(3, 9))
    assert {s: r for s, r in per_step.items() if r} == {}
    # the restarts really ran in the counted steps: codes went unused and were replaced
    assert sum(int(m.sum()) for m in restarted[2:]) > 0


def test_the_counter_sees_the_reads_it_must_see():
    """The counter is not blind: each kind of read it claims to catch is caught."""
    mode = HostReads()
    mode.active = True
    x = torch.arange(6.0)
    with mode:
        x.sum().item()
        bool(x[0] > 1)
        x[x > 2] = 0.0
        x.nonzero()
    kinds = " ".join(mode.reads)
    assert mode.reads and "_local_scalar_dense" in kinds and "boolean mask" in kinds and "nonzero" in kinds
