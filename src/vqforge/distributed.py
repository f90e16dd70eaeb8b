"""The one module that touches torch.distributed.

Everything here is a no-op in a single process, so the rest of vqforge never asks whether it runs under torchrun.

Launch: `torchrun --nproc_per_node=N -m vqforge train CONFIG` (one node) or with `--nnodes M --rdzv-endpoint HOST:PORT`
(several). `setup` joins the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): nccl when the run uses CUDA, gloo on CPU. Without torchrun nothing is initialised.

Failures: every collective waits at most `train.dist_timeout_s` seconds (gloo always; nccl through its watchdog,
which `setup` keeps on), so a rank that dies or hangs ends the others in bounded time, and `report_failure` prints
"rank N: <error>" so the log names the rank that failed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (the GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True under torchrun (or any launcher that sets RANK and WORLD_SIZE), also with a single process: then the
    run goes through the same process group and DDP path as with several, which is what a 1-GPU torchrun checks."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_for(device: str = "auto") -> str:
    """nccl when the run trains on CUDA, gloo otherwise (train.device: cpu forces gloo even on a GPU machine)."""
    return "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"


def setup(timeout_s: int = 600, device: str = "auto") -> bool:
    """Join the process group when started by torchrun. Returns True when distributed.

    `timeout_s` bounds every collective: a rank that waits longer for the others raises instead of hanging.
    `device` is train.device (it decides the backend).
    """
    if is_initialized() or not launched_by_torchrun():
        return is_initialized()
    backend = backend_for(device)
    if backend == "nccl":
        # without the watchdog's error handling nccl would ignore the timeout and a lost peer would hang this rank
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


# -- collectives (identity in one process) ------------------------------------------------------------------------
def _comm_device(device: torch.device | str) -> torch.device:
    # nccl only moves CUDA tensors; gloo moves tensors of either kind
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (and return it)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average `t` over ranks in place (and return it)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """(n_r, ...) on each rank -> (sum of n_r, ...) on every rank, rows in rank order (row counts may differ)."""
    if not is_initialized():
        return t
    dev = _comm_device(t.device)
    n = torch.tensor([t.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `t` on every rank with rank `src`'s copy (in place)."""
    if is_initialized():
        dist.broadcast(t, src=src)
    return t


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when `flag` is true on every rank: decisions that change the weights (skip a non-finite step) must
    be taken by all replicas together, or they drift apart."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([0.0 if flag else 1.0], device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() == 0.0)


def all_true_each(flags: torch.Tensor) -> list[bool]:
    """For each entry of the bool tensor `flags`: true when it is true on every rank. One all-reduce and one read to
    the host for all the flags together (a training step's only device sync)."""
    if not is_initialized():
        return [bool(v) for v in flags.tolist()]
    bad = (~flags.bool()).to(device=_comm_device(flags.device), dtype=torch.int32)
    dist.all_reduce(bad, op=dist.ReduceOp.SUM)
    return [v == 0 for v in bad.tolist()]


def all_true_on_device(flags: torch.Tensor) -> torch.Tensor:
    """For each entry of the bool tensor `flags`: true when it is true on every rank, as a bool tensor on the flags'
    device (one all-reduce, no read to the host)."""
    if not is_initialized():
        return flags.bool()
    bad = (~flags.bool()).to(device=_comm_device(flags.device), dtype=torch.int32)
    dist.all_reduce(bad, op=dist.ReduceOp.SUM)
    return (bad == 0).to(flags.device)


def all_reduce_mean_dict(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """The mean over ranks of each value (every rank passes the same keys). One all-reduce for the whole dict."""
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; for small Python objects such as RNG states)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: torch.nn.Module | None, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics, ActNorm's `initialized`, ...) to every rank.

    Each rank updates running statistics from its own batch, so replicas drift apart unless one copy is chosen;
    rank 0's is the copy that is saved. One broadcast per dtype (the buffers are concatenated first).
    EMA codebooks are not sent: they are frozen Parameters, not buffers, and stay equal on every rank because each
    update uses code counts and sums all-reduced over the ranks (`vqforge.quantizers.ema`).
    """
    if module is None or not is_initialized():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in module.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    with torch.no_grad():
        for dtype, bufs in by_dtype.items():
            wire = torch.uint8 if dtype == torch.bool else dtype  # not every backend sends bool tensors
            flat = torch.cat([b.reshape(-1).to(wire) for b in bufs])
            dist.broadcast(flat, src=src)
            offset = 0
            for b in bufs:
                n = b.numel()
                b.copy_(flat[offset:offset + n].view(b.shape).to(dtype))
                offset += n


# -- models --------------------------------------------------------------------------------------------------------
def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when running under torchrun (even with one process); the module itself otherwise.

    Gradients are averaged over ranks in backward. Buffers are not broadcast at every forward: the trainer calls
    `sync_buffers` once per step instead (a forward may update buffers in place, e.g. BatchNorm running statistics,
    and the same buffers must be identical on all ranks at the end of every step, not only at the start of a
    forward).
    """
    if not is_initialized():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    # every parameter that requires grad is used in each forward, so no unused-parameter search is needed
    return DDP(module, device_ids=ids, find_unused_parameters=False, broadcast_buffers=False)


# -- failures ------------------------------------------------------------------------------------------------------
def report_failure(exc: BaseException) -> None:
    """Under torchrun, print "rank N: <error>" to stderr so the log says which rank failed and why.

    A rank that only lost its peers (their process ended, or a collective timed out) says so, pointing to the
    rank whose own message names the cause.
    """
    if not is_initialized() and not launched_by_torchrun():
        return
    r = rank() if is_initialized() else int(os.environ.get("RANK", "0"))
    msg = f"rank {r}: {type(exc).__name__}: {exc}"
    dist_error = getattr(dist, "DistError", None)
    if (dist_error is not None and isinstance(exc, dist_error)) or "gloo" in str(exc).lower() or "nccl" in str(exc).lower():
        msg += ("\n(this is a communication failure: another rank ended or stopped answering; if another rank "
                "printed its own 'rank N:' error, that is the cause; a rank that hangs is given up on after "
                "train.dist_timeout_s seconds)")
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def command_scope(timeout_s: float, device: str):
    """A command's process-group lifetime: `setup`, then on an error "rank N: <error>" (`report_failure`) before it
    propagates, and `teardown` whatever happens. Without torchrun, setup and teardown do nothing."""
    setup(timeout_s, device)
    try:
        yield
    except Exception as e:
        report_failure(e)
        raise
    finally:
        teardown()
