"""Serialise nested training state (optimizer state dicts, RNG states, counters) without pickle.

A state tree is split into tensors (stored in a safetensors file under their dotted path) and everything else
(stored as JSON, with tensors replaced by a reference). Loading rebuilds the same tree, so optimizer and RNG states
round-trip exactly and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in `obj` by {"__tensor__": key}; collect the tensors in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if obj and all(isinstance(k, int) for k in obj):
            # optimizer state is keyed by int parameter ids; JSON keys must be strings
            return {_INTKEYS: {str(k): flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"state key {k!r} at {prefix} is not a string")
            out[k] = flatten(v, f"{prefix}.{k}" if prefix else k, tensors)
        return out
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot serialise {type(obj).__name__} at {prefix}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            try:
                return tensors[obj[_TENSOR]]
            except KeyError:
                raise CheckpointError(f"training state refers to missing tensor {obj[_TENSOR]!r}") from None
        if _TUPLE in obj:
            return tuple(unflatten(v, tensors) for v in obj[_TUPLE])
        if _INTKEYS in obj:
            return {int(k): unflatten(v, tensors) for k, v in obj[_INTKEYS].items()}
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_tree(tree: dict, directory: Path, name: str) -> None:
    """Write `name.json` + `name.safetensors` into `directory`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(tree, "", tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load_tree(directory: Path, name: str) -> dict:
    try:
        skeleton = json.loads((directory / f"{name}.json").read_text())
        tensors = load_file(str(directory / f"{name}.safetensors"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory} is not a complete vqforge checkpoint: {e.filename} is missing") from None
    except (json.JSONDecodeError, Exception) as e:  # safetensors raises its own error types
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{directory / name}.*: unreadable ({e}); the checkpoint is damaged, resume from an older one") from None
    return unflatten(skeleton, tensors)


def rng_state() -> dict:
    """Every RNG that training draws from (python, numpy, torch CPU and CUDA)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this rank's device only (each rank keeps its own state in rng_per_rank); every visible GPU from every
        # rank would repeat the same states W times and restore other ranks' devices
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # checkpoints that saved every visible device
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def atomic_dir(final: Path) -> Path:
    """A temporary sibling directory to fill; `commit_dir` renames it into place."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_dir(tmp: Path, final: Path) -> None:
    """Publish the filled `tmp` as `final`: files and directory fsynced before the rename, the parent after it."""
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
