"""The one module that touches torch.distributed.

Everything here is a no-op in a single process, so the rest of vqforge never asks whether it runs under torchrun.
"""

from __future__ import annotations

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


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (and return it)."""
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_initialized():
        dist.broadcast(t, src=src)
    return t


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(timeout_s: int = 600) -> bool:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on CPU). Returns True when distributed."""
    import datetime

    if is_initialized() or not launched_by_torchrun():
        return is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel when running under torchrun; the module itself otherwise."""
    if world_size() <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # every parameter that requires grad is used in each forward, so no unused-parameter search is needed
    return DDP(module, device_ids=ids, find_unused_parameters=False)
