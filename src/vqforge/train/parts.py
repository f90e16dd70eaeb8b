"""The resumable state of a training run, as a dict of stateful parts.

Every part has `state_dict()` and `load_state_dict(state)`; `Trainer.parts()` names them, and saving or resuming
walks that dict, so adding a part is one line there. The checkpoint directory keeps one layout for every part: a
part named in `WEIGHT_FILES` is its own safetensors file (`model.safetensors` is what `from_pretrained` reads), every
other part is one top-level entry of `training_state.json` + `.safetensors` (see `state.py`).

A part whose `state_dict()` is None is written as null (the discriminator optimizer of a run without GAN). A part
that a checkpoint lacks (written by an earlier version, or the entry was null) is loaded with None when the part
says `optional = True`, and is an error otherwise. A checkpoint entry that no part claims is an error (nothing is
silently dropped); an entry for a part this run has switched off (None: the EMA of a run resumed without it) is
left unused. Parts load in the order of the dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import torch
from torch import nn

from .. import distributed as dist
from ..errors import CheckpointError
from ..quantizers.maintenance import CodebookMaintenance
from .optim import load_optimizer_state
from .speed import match_param_layout
from .state import rng_state, set_rng_state

# weight parts: each is a flat {name: tensor} dict saved as its own file; everything else goes to training_state
WEIGHT_FILES = {"model": "model.safetensors", "model_ema": "model_ema.safetensors",
                "discriminator": "discriminator.safetensors"}


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass
class Counters:
    """Everything countable that must survive a resume."""

    step: int = 0  # completed generator steps
    disc_steps: int = 0
    skipped_steps: int = 0  # non-finite steps skipped in total
    bad_in_a_row: int = 0

    # counted by earlier versions and no longer kept; their checkpoints still load
    _RETIRED = frozenset({"images_seen"})

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(state) - known - self._RETIRED
        if unknown:
            raise CheckpointError(f"training state: unknown counters {sorted(unknown)} (known: {sorted(known)}); the "
                                  "checkpoint was written by a newer vqforge: resume with that version")
        for name in known:
            setattr(self, name, int(state.get(name, 0)))


class OptimizerState:
    """An optimizer; loading re-indexes states saved with one parameter group (`load_optimizer_state`) and gives the
    moments the parameters' memory layout (channels_last)."""

    def __init__(self, opt: torch.optim.Optimizer, params_in_module_order: list[torch.Tensor]):
        self.opt = opt
        self.params = params_in_module_order

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        load_optimizer_state(self.opt, state, self.params)
        match_param_layout(self.opt)


class RNGState:
    """This process's random streams (python, numpy, torch CPU and this rank's CUDA device).

    Under several processes every rank resumes its own stream from `PerRankRNG` (loaded after this part); when the
    checkpoint was written with another number of processes, each rank derives a distinct stream from the saved one."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)
        if dist.world_size() > 1:
            torch.manual_seed(int(torch.randint(0, 2**62, ())) + dist.rank())


class PerRankRNG:
    """Every rank's random streams, in rank order (several processes only; gathering them is a collective, so every
    rank saves). Overrides `RNGState` when the checkpoint was written with the same number of processes."""

    optional = True  # single-process checkpoints have none

    def state_dict(self) -> list | None:
        if dist.world_size() == 1:
            return None
        return dist.all_gather_object(rng_state())

    def load_state_dict(self, state: list | None) -> None:
        if state is not None and len(state) == dist.world_size() and dist.world_size() > 1:
            set_rng_state(state[dist.rank()])


class WeightEMAState:
    """The weight EMA; a checkpoint without one (EMA turned on at resume) starts it from the current weights, so the
    model part must load first."""

    optional = True
    fresh = "the checkpoint has no EMA weights; EMA starts from the current weights"

    def __init__(self, ema, model: nn.Module):
        self.ema, self.model = ema, model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        self.ema.load_state_dict(state if state is not None else self.model.state_dict())


class KMeansCollection:
    """Encoder outputs that k-means initialisation has collected and not yet used, by the maintenance module's name
    in the model. Saved only while a collection is under way (otherwise None: no entry in the checkpoint), outside
    the model's state dict, so the model's keys never depend on when it was saved. Loaded after the model (whose
    loading empties the collections); a checkpoint without the part (saved outside a collection, or by an earlier
    version) leaves them empty."""

    optional = True

    def __init__(self, model: nn.Module):
        self.collectors = {name: m for name, m in model.named_modules() if isinstance(m, CodebookMaintenance)}

    def state_dict(self) -> dict[str, list[torch.Tensor]] | None:
        state = {name: m.collected_batches() for name, m in self.collectors.items()}
        state = {name: batches for name, batches in state.items() if batches}
        return state or None

    def load_state_dict(self, state: dict[str, list[torch.Tensor]] | None) -> None:
        state = state or {}
        unknown = sorted(set(state) - set(self.collectors))
        if unknown:
            raise CheckpointError(f"the checkpoint holds k-means batches for {', '.join(unknown)}, which this model "
                                  f"does not have (its codebooks with maintenance: "
                                  f"{', '.join(self.collectors) or 'none'}); resume with the run's configuration")
        for name, m in self.collectors.items():
            m.load_collected_batches(list(state.get(name, [])))


class LastValidation:
    """The metrics of the last validation (what `fit` returns when no validation follows a resume)."""

    optional = True

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def state_dict(self) -> dict[str, float]:
        return dict(self.metrics)

    def load_state_dict(self, state: dict[str, float] | None) -> None:
        self.metrics = dict(state or {})


def save_parts(parts: dict[str, Stateful | None]) -> dict[str, Any]:
    """{name: state} of every part (None where the part is absent or has nothing to save)."""
    return {name: (part.state_dict() if part is not None else None) for name, part in parts.items()}


def load_parts(parts: dict[str, Stateful | None], state: dict[str, Any]) -> list[str]:
    """Load `state` into `parts`, in order; returns the notes of optional parts that started fresh."""
    unknown = sorted(k for k, v in state.items() if k not in parts and v is not None)
    if unknown:
        raise CheckpointError(f"the checkpoint holds parts this vqforge does not know: {', '.join(unknown)} (known: "
                              f"{', '.join(parts)}); it was written by a newer version: resume with that version")
    notes = []
    for name, part in parts.items():
        if part is None:
            continue
        value = state.get(name)
        if value is None:
            if not getattr(part, "optional", False):
                raise CheckpointError(f"the checkpoint has no '{name}' (its training state holds "
                                      f"{', '.join(sorted(k for k, v in state.items() if v is not None))}); "
                                      "resume from a checkpoint of this run's configuration")
            if getattr(part, "fresh", None):
                notes.append(part.fresh)
        part.load_state_dict(value)
    return notes


__all__ = ["WEIGHT_FILES", "Stateful", "Counters", "OptimizerState", "RNGState", "PerRankRNG", "WeightEMAState",
           "KMeansCollection", "LastValidation", "save_parts", "load_parts"]
