"""Checkpoints: one directory per save, written atomically, readable without unpickling.

Layout of `RUN_DIR/checkpoints/step_00001000/`:
  config.json              the resolved config (same format as an exported model, so `from_pretrained` reads it)
  model.safetensors        tokenizer weights (taming key names for taming models)
  model_ema.safetensors    weight-EMA copy, when enabled
  discriminator.safetensors  only when use_gan is true
  training_state.json/.safetensors  optimizers, step, counters, RNG states, data position
`checkpoints/latest` names the newest directory, `checkpoints/best.json` the best by the validation metric.

The trainer hands over its state as a dict of parts (`parts.py`): the weight parts become the safetensors files
above, every other part one top-level entry of `training_state`; loading gives back the same dict.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.pretrained import atomic_write_text, latest_checkpoint, load_safetensors, read_config, save_safetensors
from ..utils import is_better
from .parts import WEIGHT_FILES
from .state import atomic_dir, commit_dir, fsync_dir, load_tree, save_tree


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir or a checkpoint dir. A run dir resolves as for every reader of run
    directories (`resolve_model_dir`): the checkpoint `latest` names (relative or absolute), else the highest step."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; give a run directory, a checkpoints/step_* directory, or a "
                              "checkpoint file of the previous system (.pth.tar / .pt)")
    p = latest_checkpoint(p) or p  # a run directory: its latest checkpoint
    if not (p / "training_state.json").is_file():
        raise CheckpointError(
            f"{p} is not a vqforge training checkpoint (no training_state.json); resume takes a run directory or "
            "a checkpoints/step_* directory"
        )
    return p


class Checkpointer:
    """Saves and prunes checkpoints of one run. Only the main rank writes."""

    def __init__(self, run_dir: Path, *, keep_last: int, best_metric: str, enabled: bool = True):
        self.dir = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def best(self) -> dict | None:
        f = self.dir / "best.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def is_better(self, value: float) -> bool:
        best = self.best()
        return is_better(self.best_metric, value, None if best is None else best["value"])

    def save(
        self,
        step: int,
        *,
        config_json: str,
        model: dict[str, torch.Tensor],
        training_state: dict,
        model_ema: dict[str, torch.Tensor] | None = None,
        discriminator: dict[str, torch.Tensor] | None = None,
        metric: float | None = None,
    ) -> Path | None:
        if not self.enabled:
            return None
        name = f"step_{step:08d}"
        final = self.dir / name
        tmp = atomic_dir(final)
        (tmp / "config.json").write_text(config_json)
        for part, weights in (("model", model), ("model_ema", model_ema), ("discriminator", discriminator)):
            if weights is not None:
                save_safetensors(weights, tmp / WEIGHT_FILES[part])
        save_tree(training_state, tmp, "training_state")
        latest = self.dir / "latest"
        if final.exists():
            # re-saving a step (a run resumed from an older checkpoint): `latest` must not name `final` while it is
            # swapped, so it names the newest other checkpoint (or nothing) until the new one is in place
            others = [p for p in sorted(self.dir.glob("step_*")) if p.is_dir() and p.name != name]
            if others:
                atomic_write_text(latest, others[-1].name + "\n")
            else:
                latest.unlink(missing_ok=True)
            fsync_dir(self.dir)
        commit_dir(tmp, final)
        atomic_write_text(latest, name + "\n")
        fsync_dir(self.dir)
        if metric is not None and self.is_better(metric):
            atomic_write_text(self.dir / "best.json", json.dumps(
                {"checkpoint": name, "step": step, "metric": self.best_metric, "value": metric}))
        self._prune()
        return final

    def save_state(self, step: int, state: dict, *, config_json: str, metric: float | None = None) -> Path | None:
        """Save a trainer's {part name: state} (`Trainer.state_dict()`): weight parts as their files, the rest as
        the training state."""
        weights = {name: state.get(name) for name in WEIGHT_FILES}
        return self.save(step, config_json=config_json, model=weights["model"], model_ema=weights["model_ema"],
                         discriminator=weights["discriminator"], metric=metric,
                         training_state={k: v for k, v in state.items() if k not in WEIGHT_FILES})

    def _prune(self) -> None:
        ckpts = sorted(p for p in self.dir.glob("step_*") if p.is_dir())
        best = self.best()
        keep = {p.name for p in ckpts[-self.keep_last:]}
        if best is not None:
            keep.add(best["checkpoint"])
        for p in ckpts:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


def _step_dirs(checkpoints: Path) -> list[Path]:
    return sorted((p for p in checkpoints.glob("step_*") if p.is_dir()), reverse=True)


def load_resume_checkpoint(path: str | Path) -> dict:
    """`load_checkpoint` for `--resume PATH`. For a run directory: its `latest` checkpoint, or, when that one is
    missing or damaged (a crash mid-write, a truncated copy), the newest intact one, with a warning naming each
    damaged checkpoint that was passed over. A checkpoint directory given directly must be intact."""
    p = Path(path)
    checkpoints = p / "checkpoints"
    if not checkpoints.is_dir():
        return load_checkpoint(resolve_checkpoint(p))
    candidates: list[Path] = []
    latest = checkpoints / "latest"
    if latest.is_file():
        candidates.append(checkpoints / latest.read_text().strip())
    candidates += [d for d in _step_dirs(checkpoints) if d not in candidates]
    problems: list[str] = []
    for c in candidates:
        try:
            ckpt = load_checkpoint(resolve_checkpoint(c) if c.exists() else c)
        except CheckpointError as e:
            problems.append(f"{c.name}: {str(e).splitlines()[0]}")
            continue
        if problems:
            warnings.warn(f"resuming from {c} instead: the newer checkpoint(s) are damaged or missing: "
                          + "; ".join(problems), stacklevel=2)
            ckpt["passed_over"] = problems
        return ckpt
    raise CheckpointError(f"{p}: no intact checkpoint to resume from ({'; '.join(problems) or 'none saved'})\n"
                          "  fix: resume from another run directory or a checkpoint directory, or start a new run")


def load_checkpoint(ckpt_dir: Path) -> dict:
    """Everything a resume needs: the run's Config ("config") and the trainer's parts ("state": {part name: state},
    as `Trainer.load_state_dict` takes it; a weight file that is absent is None)."""
    state = load_tree(ckpt_dir, "training_state")
    for name, file in WEIGHT_FILES.items():
        path = ckpt_dir / file
        if name == "model" or path.exists():
            state[name] = load_safetensors(path)
    return {"config": read_config(ckpt_dir), "state": state}
