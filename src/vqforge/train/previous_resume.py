"""Resume a vqforge run from a checkpoint of the user's previous system (see `models/previous.py` for the layouts).

What carries over, each only when it maps one to one:
- model weights: always, strictly (a key or shape that does not fit is an error, never ignored);
- discriminator weights (when use_gan is true and the file has them): strictly;
- Adam moments of both optimizers: matched by parameter name (the previous system ordered its optimizer's
  parameters differently), only when the file's optimizer covers exactly vqforge's trainable parameters with the
  same shapes; the config's hyper-parameters (betas, eps) stay in force;
- the step; the learning-rate schedule, which in vqforge is a function of the step, is checked against the file's
  ExponentialLR state.
Everything else starts fresh, and the start-up log says so item by item: what the file does not record (data
position, RNG states, weight EMA) and what did not map.

Apart from the weights (loaded strictly first, with errors that name the config fields to fix), what maps is handed
to the trainer's stateful parts (`Trainer.parts()`, parts.py) by part name, as a vqforge checkpoint is: the optimizer
part re-indexes and lays out the moments, the counters part takes the step. A part the file cannot fill starts as
built and is reported (`FRESH_PARTS`, or by its name), so a new part needs no change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..config.schema import Config
from ..models.pretrained import load_state_dict_strict
from ..models.previous import LAYOUT_NAMES, PreviousCheckpoint, previous_weights
from ..errors import CheckpointError
from .trainer import Trainer

_ADAM_STATE_KEYS = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


@dataclass
class ResumeReport:
    restored: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self, ckpt: PreviousCheckpoint) -> list[str]:
        out = [f"resume from a checkpoint of the previous system, {LAYOUT_NAMES[ckpt.layout]}: {ckpt.path}"]
        out += [f"  restored: {s}" for s in self.restored]
        out += [f"  starts fresh: {s}" for s in self.fresh]
        out += [f"  note: {s}" for s in self.notes]
        return out


def map_optimizer_state(saved: Any, saved_order: list[str], opt: torch.optim.Optimizer,
                        names: Mapping[int, str]) -> tuple[dict | None, str]:
    """`saved` (an Adam state dict whose parameters are `saved_order`, by name) re-indexed for `opt`.

    Returns (state dict to load, "") or (None, why it does not map). The hyper-parameters of `opt` are kept."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("param_groups"), list) \
            or not isinstance(saved.get("state"), Mapping):
        return None, "the file's entry is not an optimizer state dict"
    ids = [i for g in saved["param_groups"] for i in g.get("params", [])]
    if len(ids) != len(saved_order):
        return None, (f"the file's optimizer holds {len(ids)} parameters, but the file's model has "
                      f"{len(saved_order)} that its optimizer would train")
    current = [p for g in opt.param_groups for p in g["params"]]
    cur_names = [names[id(p)] for p in current]
    only_file = sorted(set(saved_order) - set(cur_names))
    only_here = sorted(set(cur_names) - set(saved_order))
    if only_file or only_here:
        return None, ("its parameters differ from vqforge's trainable ones"
                      + (f"; only in the file: {', '.join(only_file[:4])}" if only_file else "")
                      + (f"; only in vqforge: {', '.join(only_here[:4])}" if only_here else ""))
    saved_id = dict(zip(saved_order, ids))
    state: dict[int, dict] = {}
    for j, (name, p) in enumerate(zip(cur_names, current)):
        s = saved["state"].get(saved_id[name])
        if s is None:  # the parameter never received a gradient there
            continue
        if not isinstance(s, Mapping) or not set(s) <= _ADAM_STATE_KEYS or "exp_avg" not in s:
            return None, f"its state for {name} is not Adam's (keys {sorted(s) if isinstance(s, Mapping) else s})"
        for k in ("exp_avg", "exp_avg_sq"):
            if not isinstance(s.get(k), torch.Tensor) or s[k].shape != p.shape:
                return None, f"its {k} for {name} has shape {tuple(getattr(s.get(k), 'shape', ()))}, the parameter {tuple(p.shape)}"
        entry = {k: v for k, v in s.items() if k != "max_exp_avg_sq" or opt.defaults.get("amsgrad")}
        step = entry.get("step", 0)
        entry["step"] = step.float().reshape(()) if isinstance(step, torch.Tensor) else torch.tensor(float(step))
        state[j] = entry
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}, ""


def _hyper_note(saved: Any, opt: torch.optim.Optimizer, what: str) -> str | None:
    try:
        g = saved["param_groups"][0]
    except (KeyError, IndexError, TypeError):
        return None
    now = opt.param_groups[0]
    diffs = [f"{k} {tuple(g[k]) if isinstance(g[k], (list, tuple)) else g[k]} -> "
             f"{tuple(now[k]) if isinstance(now[k], (list, tuple)) else now[k]}"
             for k in ("betas", "eps", "weight_decay") if k in g and k in now
             and not _same(g[k], now[k])]
    if not diffs:
        return None
    return f"{what}: the file's moments were accumulated with other hyper-parameters; the config's apply from here ({'; '.join(diffs)})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def _schedule(ckpt: PreviousCheckpoint, trainer: Trainer, step: int, rep: ResumeReport) -> None:
    plan = trainer.cfg.lr_plan
    ours = plan.base_lr * plan.factor(step)
    sch = ckpt.scheduler
    if ckpt.layout == "later":
        if plan.schedule == "constant" and plan.warmup_steps == 0:
            rep.restored.append(f"learning rate: constant {ours:g}, as the later system trained (it had no schedule)")
        else:
            rep.notes.append(f"learning rate: the later system used a constant rate; the config's {plan.schedule} "
                             f"schedule gives {ours:g} at step {step}")
        return
    gamma = sch.get("gamma") if isinstance(sch, Mapping) else None
    last = sch.get("last_epoch") if isinstance(sch, Mapping) else None
    bases = sch.get("base_lrs") if isinstance(sch, Mapping) else None
    if not isinstance(gamma, (int, float)) or not isinstance(last, int) or not bases:
        rep.fresh.append(f"learning-rate schedule: the file has no ExponentialLR state; the config's schedule "
                         f"gives {ours:g} at step {step}")
        return
    theirs = float(bases[0]) * float(gamma) ** last
    same = (plan.schedule == "exponential" and plan.warmup_steps == 0 and plan.decay_every == 1000
            and math.isclose(plan.decay, gamma, rel_tol=1e-9) and math.isclose(plan.base_lr, float(bases[0]), rel_tol=1e-9)
            and math.isclose(ours, theirs, rel_tol=1e-6))
    if same:
        rep.restored.append(f"learning-rate schedule: lr {ours:g} = {float(bases[0]):g} × {gamma:g}^{last} "
                            "(the file's ExponentialLR, stepped every 1000 steps; vqforge computes it from the step)")
    else:
        rep.fresh.append(
            f"learning-rate schedule: the file's ExponentialLR (base {float(bases[0]):g}, gamma {gamma:g}, {last} decays: "
            f"lr {theirs:g}) is not the config's ({plan.schedule}, base {plan.base_lr:g}, decay {plan.decay:g} every "
            f"{plan.decay_every} steps: lr {ours:g} at step {step}); the config's schedule applies"
        )


def restore_previous(ckpt: PreviousCheckpoint, cfg: Config, trainer: Trainer, model: nn.Module,
                     discriminator: nn.Module | None, ema: Any) -> ResumeReport:
    """Load what maps from `ckpt` into the built run; return what was restored and what starts fresh."""
    rep = ResumeReport()
    weights = previous_weights(ckpt, cfg.model)
    load_state_dict_strict(model, weights.model, str(ckpt.path))
    rep.restored.append(f"model weights: {len(weights.model)} tensors (strict: every key and shape matched)")
    rep.notes += [f"not used from the file: {d}" for d in weights.dropped]

    if discriminator is None:
        if weights.discriminator:
            rep.notes.append(f"not used from the file: the discriminator ({len(weights.discriminator)} tensors, "
                             f"{weights.discriminator_source}): loss.use_gan is false, so none is built")
    elif weights.discriminator:
        try:
            load_state_dict_strict(discriminator, weights.discriminator, f"{ckpt.path} ({weights.discriminator_source})")
        except CheckpointError as e:
            raise CheckpointError(
                f"{e}\n  the discriminator the file trained does not fit the config's (loss.disc_num_layers, "
                "disc_ndf, disc_in_channels, disc_norm); set them to the trained sizes (the previous system: 3 "
                "layers, 64 filters, BatchNorm), or start the discriminator fresh by resuming with use_gan off first"
            ) from None
        rep.restored.append(f"discriminator weights: {len(weights.discriminator)} tensors ({weights.discriminator_source})")
    else:
        rep.fresh.append("discriminator weights: the file has none (the GAN was off there, or the file's layout "
                         "does not store them)")

    # the rest goes through the trainer's parts (parts.py), by their names: what the file maps fills its part, every
    # other part starts as built, and the report says so (a part added to Trainer.parts() appears here by itself)
    state: dict[str, Any] = {}
    explained: set[str] = set()  # parts whose fresh start is already reported with its reason
    g_names = {id(p): n for n, p in model.named_parameters()}
    mapped, why = map_optimizer_state(ckpt.optimizer, weights.optimizer_order, trainer.opt_g, g_names)
    key = "'optimizer'" if ckpt.layout == "first" else "'opt_ae'"
    if mapped is not None:
        state["opt_g"] = mapped
        rep.restored.append(f"autoencoder optimizer ({key}): Adam moments of {len(mapped['state'])} parameters, "
                            "matched by name")
        note = _hyper_note(ckpt.optimizer, trainer.opt_g, "autoencoder optimizer")
        if note:
            rep.notes.append(note)
    else:
        rep.fresh.append(f"autoencoder optimizer ({key}): {why}")
        explained.add("opt_g")

    if trainer.opt_d is not None and discriminator is not None:
        explained.add("opt_d")
        disc_loaded = bool(weights.discriminator)
        d_key = "'optimizer_disc'" if ckpt.layout == "first" else "'opt_disc'"
        if ckpt.optimizer_disc is None:
            rep.fresh.append(f"discriminator optimizer: the file has no {d_key}")
        elif not disc_loaded:
            rep.fresh.append(f"discriminator optimizer: the file's {d_key} belongs to discriminator weights it does "
                             "not hold; moments without their weights are not restored")
        else:
            d_names = {id(p): n for n, p in discriminator.named_parameters()}
            mapped, why = map_optimizer_state(ckpt.optimizer_disc, weights.discriminator_order, trainer.opt_d, d_names)
            if mapped is not None:
                state["opt_d"] = mapped
                explained.discard("opt_d")
                rep.restored.append(f"discriminator optimizer ({d_key}): Adam moments of {len(mapped['state'])} parameters")
                note = _hyper_note(ckpt.optimizer_disc, trainer.opt_d, "discriminator optimizer")
                if note:
                    rep.notes.append(note)
            else:
                rep.fresh.append(f"discriminator optimizer ({d_key}): {why}")

    step = ckpt.steps_done
    state["counters"] = {"step": step}  # the other counters load as 0
    rep.restored.append(f"step: {ckpt.step_note}")
    rep.fresh.append("step counters other than the step (discriminator steps, skipped steps): from 0")
    if step >= trainer.cfg.num_steps:
        rep.notes.append(f"the file is at step {step} and train.num_steps is {trainer.cfg.num_steps}: nothing is left to "
                         "train; raise train.num_steps to continue")
    _schedule(ckpt, trainer, step, rep)

    for name, part in trainer.parts().items():
        if part is None or name in ("model", "discriminator"):  # loaded strictly above
            continue
        value = state.get(name)
        if value is not None:
            part.load_state_dict(value)
            continue
        if getattr(part, "optional", False):
            part.load_state_dict(None)  # the part's own fresh start (the weight EMA: from the restored weights)
        if name not in explained:
            note = FRESH_PARTS.get(name, f"{name}: the previous system's file records none; it starts as built")
            if note:
                rep.fresh.append(note.format(seed=cfg.train.seed))
    return rep


# how each trainer part that the previous system's file does not record starts, as the report says it (None: nothing
# to report); a part not listed is reported by its name
FRESH_PARTS: dict[str, str | None] = {
    "model_ema": "weight EMA: the previous system kept none; it starts from the restored weights",
    "kmeans": None,  # nothing collected yet: k-means (if on) collects from the resumed step, as in any run
    "rng": "random number generators: the file records none; seeded from train.seed",
    "rng_per_rank": None,  # covered by "rng"
    "data": "data order: the file records no data position; the training stream starts from its beginning "
            "(seed train.seed {seed})",
    "last_val": None,  # no validation yet
}


__all__ = ["restore_previous", "map_optimizer_state", "ResumeReport"]
