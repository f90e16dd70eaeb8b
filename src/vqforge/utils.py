"""Small runtime helpers that training, evaluation and the commands share: the plain module inside wrappers, the
device a run uses, and which of two metric values is better.

Depends on torch and `vqforge.distributed` only, so that any package can use it without importing another.
"""

from __future__ import annotations

import contextlib
import math
from typing import TypeVar

import torch
from torch import nn

from . import distributed as dist
from .errors import ConfigError

M = TypeVar("M", bound=nn.Module)

# metric -> True when larger is better (for choosing the best checkpoint and for reports)
HIGHER_IS_BETTER = {"psnr": True, "psnr_aggregate": True, "ssim": True, "lpips": False, "rfid": False,
                    "rec_loss": False, "mse": False}


def unwrap_model(model: M | None) -> M | None:
    """The plain module inside DDP / DataParallel / torch.compile wrappers (their state-dict keys carry prefixes);
    None stays None."""
    while model is not None:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            break
    return model


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """'auto' (this process's GPU when CUDA is available, else the CPU), 'cpu', 'cuda' (this process's GPU under
    torchrun) or 'cuda:N'. `field` names the setting in the error when CUDA is asked for but missing."""
    if name == "auto":
        return torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(field, f"{name!r} is not a device ({e})", "use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(field, f"{name!r} requested but CUDA is not available", "use auto or cpu")
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        return torch.device("cuda", dist.local_rank())
    return device


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether `new` beats `best` for `metric` (direction from HIGHER_IS_BETTER; unknown metrics: higher)."""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if HIGHER_IS_BETTER.get(metric, True) else new < best


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA devices that support it, fp32 elsewhere; 'fp32' and 'bf16' stay."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
