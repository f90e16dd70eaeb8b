"""How a training run uses the hardware: precision, memory format, fused optimizers, torch.compile, prefetching.

None of these change what is computed, only how: the defaults are chosen per device from measurements
(`bench/compare_taming.py`, README "Speed"), and every choice can be forced with its `train.*` field.
"""

from __future__ import annotations

import inspect
import shutil
from typing import Any, Callable

import torch
from torch import nn

# torch.compile backend; tests swap in "eager" (graph capture without code generation) to stay fast
COMPILE_BACKEND = "inductor"


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """train.channels_last: null is on for CPU only (oneDNN's NHWC convolutions and GroupNorm: the measured
    autoencoder step took 0.70x the time, README "Speed"). On CUDA it is off: GroupNorm has no NHWC kernel there, so
    every norm layer copies to NCHW and back; on an H200 the taming f16 GAN step pair at 256² took 1.19x (batch 8) to
    1.28x (batch 32) the time of NCHW in bf16 (README "GPU")."""
    if channels_last is None:
        return device.type == "cpu"
    return channels_last


def to_channels_last(*modules: nn.Module | None) -> None:
    """Convert the 4-d parameters and buffers of `modules` to NHWC in place (1-d ones are unaffected)."""
    for m in modules:
        if m is not None:
            m.to(memory_format=torch.channels_last)


def fused_supported(device: torch.device) -> bool:
    """Whether torch's fused Adam kernels exist for `device` (CUDA; CPU from torch 2.4)."""
    if "fused" not in inspect.signature(torch.optim.Adam).parameters:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        major, minor = (int(v) for v in torch.__version__.split(".")[:2])
        return (major, minor) >= (2, 4)
    return False


def resolve_fused(fused: bool | None, device: torch.device) -> bool:
    """train.fused_optimizer: null = fused where supported; true where unsupported is an error (names the fix)."""
    if fused is None:
        return fused_supported(device)
    if fused and not fused_supported(device):
        from ..errors import ConfigError

        raise ConfigError("train.fused_optimizer", f"fused Adam kernels are not available for {device} in torch "
                          f"{torch.__version__}", "set train.fused_optimizer: null (auto) or false")
    return fused


def make_optimizer(kind: str, params: list, lr: float, betas, weight_decay: float, *,
                   fused: bool) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    extra = {"fused": True} if fused else {"foreach": True}
    return cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **extra)


@torch.no_grad()
def match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor of a parameter's shape that parameter's memory layout.

    A loaded state dict brings contiguous (NCHW) moments, while channels_last parameters are NHWC; fused and
    foreach kernels walk the tensors' storage in order, so the layouts must agree."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work here (None when it can): no torch.compile, no C++ compiler for inductor's CPU
    code, or no Triton for its CUDA code."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if COMPILE_BACKEND != "inductor":
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (inductor needs it for CUDA code)"
        return None
    try:
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx[-1] if isinstance(inductor_config.cpp.cxx, tuple) else inductor_config.cpp.cxx
    except Exception:  # noqa: BLE001 - an inductor without this setting: fall back to the usual compiler name
        cxx = None
    if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        return "no C++ compiler (g++/clang++) on PATH for inductor's CPU code"
    return None


class CompiledForward:
    """Calls `torch.compile(module)`; if compiling fails at the first call, says why once and stays eager.

    The module itself is untouched (state-dict keys, DDP wrapper, hooks): the compiled callable shares its
    parameters and is used only for the training forward. A failure after a compiled call succeeded is re-raised,
    so a real error is never hidden behind a silent switch to eager mode.
    """

    def __init__(self, module: nn.Module, warn: Callable[[str], Any]):
        self.module = module
        self._warn = warn
        self._ok = False
        self.compiled: Callable | None = torch.compile(module, backend=COMPILE_BACKEND)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                out = self.compiled(*args, **kwargs)
                self._ok = True
                return out
            except Exception as e:  # noqa: BLE001 - tracing, code generation or the C++/Triton build failed
                if self._ok:
                    raise
                self.compiled = None
                self._warn(f"train.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                           "training continues in eager mode")
        return self.module(*args, **kwargs)


def training_forward(module: nn.Module, enabled: bool, device: torch.device,
                     warn: Callable[[str], Any]) -> Callable:
    """The callable that runs the training forward: `module` itself, or a `CompiledForward` of it."""
    if not enabled:
        return module
    reason = compile_unavailable_reason(device)
    if reason is not None:
        warn(f"train.compile: {reason}; training runs in eager mode")
        return module
    return CompiledForward(module, warn)


class DevicePrefetcher:
    """Keeps the next batch's host-to-GPU copy in flight while the current step computes (CUDA only).

    Wraps the train stream: `next()` returns the batch that was copied during the previous step and starts the copy
    of the following one on a side stream (the source is pinned memory, so the copy is asynchronous). The position
    it reports for checkpoints is the wrapped stream's minus the batch it holds, so a resume continues with exactly
    that batch.
    """

    def __init__(self, stream, device: torch.device, convert: Callable[[torch.Tensor], torch.Tensor]):
        self.stream = stream
        self.device = device
        self.convert = convert
        self.copy_stream = torch.cuda.Stream(device)
        self._next: torch.Tensor | None = None

    def _fetch(self) -> torch.Tensor:
        batch = next(self.stream)
        with torch.cuda.stream(self.copy_stream):
            return self.convert(batch.to(self.device, non_blocking=True))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        x = self._next if self._next is not None else self._fetch()
        torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        x.record_stream(torch.cuda.current_stream(self.device))
        self._next = self._fetch()
        return x

    def __getattr__(self, name: str):  # skipped_files, close, ... of the wrapped stream
        return getattr(self.stream, name)

    def state_dict(self) -> dict:
        state = dict(self.stream.state_dict())
        if self._next is not None:
            state["batches"] = int(state["batches"]) - 1  # the held batch has not been trained on
        return state

    def load_state_dict(self, state: dict) -> None:
        self._next = None
        self.stream.load_state_dict(state)
