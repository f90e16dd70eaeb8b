"""The training loop: `Trainer.fit() → train_step() → generator_step() / discriminator_step()`.

The trainer receives built objects (see `build.py`); it never reads the config file. What it owns is the order of
operations, the counters, gradient accumulation and clipping, the non-finite guard, validation and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import distributed as dist
from ..data import to_model_input
from ..errors import TrainingError
from ..images import labelled_grid
from ..utils import autocast as _autocast
from ..utils import unwrap_model as _unwrap
from ..losses.objective import LossOutput, VQGANObjective
from ..models.output import TokenizerOutput
from .checkpoint import Checkpointer
from .ema import WeightEMA
from .logger import RunLogger, Throughput
from .optim import load_optimizer_state
from .schedules import lr_factor
from .snapshot import StepSnapshot
from .speed import DevicePrefetcher, match_param_layout
from .state import rng_state, set_rng_state


@dataclass
class GanSchedule:
    """When the discriminator trains. `None` in the trainer means use_gan is false (no discriminator exists)."""

    disc_start: int  # generator step from which the adversarial term counts (loss.disc_start)
    update_every: int  # discriminator step every N generator steps
    warmup_steps: int  # the discriminator starts training this many steps before disc_start
    disc_factor: float  # the factor used for the discriminator loss during warm-up

    @property
    def first_step(self) -> int:
        return max(0, self.disc_start - self.warmup_steps)

    def trains_at(self, step: int) -> bool:
        return step >= self.first_step and step % self.update_every == 0


@dataclass
class LRPlan:
    base_lr: float
    disc_base_lr: float
    schedule: str
    total_steps: int
    warmup_steps: int
    decay: float
    decay_every: int
    min_lr: float
    disc_follows_schedule: bool = True  # false: the discriminator's lr stays at disc_base_lr (train.disc_lr_schedule)

    def factor(self, step: int) -> float:
        return lr_factor(step, self.schedule, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                         decay=self.decay, decay_every=self.decay_every,
                         min_ratio=self.min_lr / self.base_lr if self.base_lr > 0 else 0.0)


@dataclass
class Counters:
    """Everything countable that must survive a resume."""

    step: int = 0  # completed generator steps
    disc_steps: int = 0
    skipped_steps: int = 0  # non-finite steps skipped in total
    bad_in_a_row: int = 0
    images_seen: int = 0


@dataclass
class StepResult:
    # loss terms and statistics of the step as they were computed: 0-dim device tensors (and plain floats), so
    # that a step needs no host sync for them; `terms` reads them as floats (one sync when asked)
    device_terms: dict[str, torch.Tensor | float]
    finite: bool
    disc_stepped: bool
    reconstruction: torch.Tensor | None = None
    inputs: torch.Tensor | None = None

    @property
    def terms(self) -> dict[str, float]:
        return floats(self.device_terms)


def floats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Device scalars -> Python floats, with one host transfer for all of them."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if keys:
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, stacked))
    return {k: out[k] for k in values}


def generator_step(
    model: nn.Module,
    objective: VQGANObjective,
    discriminator: nn.Module | None,
    x: torch.Tensor,
    step: int,
    last_layer: torch.Tensor,
    *,
    precision: str = "fp32",
    loss_scale: float = 1.0,
) -> tuple[LossOutput, TokenizerOutput]:
    """Forward the tokenizer, compute the generator objective and backpropagate `loss_scale × total`."""
    with _autocast(x.device, precision):
        out: TokenizerOutput = model(x)
        loss = objective.generator_loss(x, out, step, last_layer, discriminator)
    (loss.total * loss_scale).backward()
    return loss, out


def discriminator_step(
    objective: VQGANObjective,
    discriminator: nn.Module,
    x: torch.Tensor,
    recon: torch.Tensor,
    step: int,
    *,
    factor_override: float | None = None,
    precision: str = "fp32",
    loss_scale: float = 1.0,
) -> LossOutput:
    """Discriminator loss on real `x` and the generator step's detached reconstruction (no second forward)."""
    with _autocast(x.device, precision):
        loss = objective.discriminator_loss(discriminator, x, recon.detach(), step, factor_override=factor_override)
    (loss.total * loss_scale).backward()
    return loss


def _grad_norm(params: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # clip_grad_norm_ with an infinite max only measures; error_if_nonfinite off so the guard below decides
    return torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else math.inf, foreach=True)


def _snapshot(*modules: nn.Module | None) -> StepSnapshot:
    return StepSnapshot(*modules)


def _restore(snapshot: StepSnapshot) -> None:
    snapshot.restore()


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        objective: VQGANObjective,
        discriminator: nn.Module | None,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer | None,
        gan: GanSchedule | None,
        lr_plan: LRPlan,
        train_stream: Any,
        val_loader: Iterable | None,
        logger: RunLogger,
        checkpointer: Checkpointer,
        device: torch.device,
        num_steps: int,
        grad_accum_steps: int = 1,
        grad_clip: float | None = None,
        precision: str = "fp32",
        ema: WeightEMA | None = None,
        max_bad_steps: int = 10,
        save_interval: int = 1000,
        validation_interval: int = 500,
        val_max_batches: int | None = None,
        best_metric: str = "psnr",
        log_every: int = 10,
        image_every: int | None = None,
        config_json: str = "",
        evaluate_fn: Callable[..., dict[str, float]] | None = None,
        channels_last: bool = False,
        forward: Callable[[torch.Tensor], TokenizerOutput] | None = None,
    ):
        if (discriminator is None) != (gan is None) or (discriminator is None) != (opt_d is None):
            raise ValueError("discriminator, its optimizer and its schedule must all be given or all be None")
        self.model = model
        self.raw_model = _unwrap(model)
        self.objective = objective
        self.discriminator = discriminator
        self.opt_g = opt_g
        self.opt_d = opt_d
        self.gan = gan
        self.lr_plan = lr_plan
        self.stream = train_stream
        self.val_loader = val_loader
        self.logger = logger
        self.ckpt = checkpointer
        self.device = device
        self.num_steps = num_steps
        self.grad_accum_steps = grad_accum_steps
        self.grad_clip = grad_clip
        self.precision = precision
        self.ema = ema
        self.max_bad_steps = max_bad_steps
        self.save_interval = save_interval
        self.validation_interval = validation_interval
        self.val_max_batches = val_max_batches
        self.best_metric = best_metric
        self.log_every = log_every
        self.image_every = image_every if image_every is not None else validation_interval  # null: at validations
        self.config_json = config_json
        self.evaluate_fn = evaluate_fn
        self.channels_last = channels_last
        # the training forward: the model itself, or a torch.compile'd call of it (train.compile)
        self.forward = forward if forward is not None else model
        self.counters = Counters()
        self.gen_params = [p for p in self.model.parameters() if p.requires_grad]
        self.disc_params = [p for p in discriminator.parameters() if p.requires_grad] if discriminator is not None else []
        self._last_val: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------------------
    def _set_lr(self, step: int) -> float:
        f = self.lr_plan.factor(step)
        for g in self.opt_g.param_groups:
            g["lr"] = self.lr_plan.base_lr * f
        if self.opt_d is not None:
            fd = f if self.lr_plan.disc_follows_schedule else 1.0
            for g in self.opt_d.param_groups:
                g["lr"] = self.lr_plan.disc_base_lr * fd
        return self.lr_plan.base_lr * f

    def _next_inputs(self) -> torch.Tensor:
        if isinstance(self.stream, DevicePrefetcher):  # CUDA: already copied and converted during the last step
            return next(self.stream)
        return self.to_input(next(self.stream).to(self.device, non_blocking=True))

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, C) uint8 batch -> (B·D, C, H, W) model input in [-1, 1], in the run's memory format."""
        x = to_model_input(batch)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _sync_context(self, module: nn.Module, last_micro: bool):
        # DDP: all-reduce gradients only on the last micro-batch of an accumulation
        if not last_micro and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def train_step(self) -> StepResult:
        step = self.counters.step
        self.raw_model.set_step(step)
        lr = self._set_lr(step)
        # in-place state that a non-finite step must not corrupt (EMA codebooks, k-means, BatchNorm running stats,
        # ActNorm): the generator step runs the discriminator in train mode, so its state is saved too
        snapshot = _snapshot(self.model, _unwrap(self.discriminator))
        self.opt_g.zero_grad(set_to_none=True)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator step needs no discriminator weight gradients

        totals: dict[str, torch.Tensor | float] = {}  # device scalars: no host sync until they are logged
        micro: list[tuple[torch.Tensor, torch.Tensor]] = []
        ok = torch.ones((), dtype=torch.bool, device=self.device)
        scale = 1.0 / self.grad_accum_steps
        for i in range(self.grad_accum_steps):
            x = self._next_inputs()
            with self._sync_context(self.model, i == self.grad_accum_steps - 1):
                # the unwrapped discriminator: its weights are frozen here, so the DDP wrapper (gradient sync) has
                # nothing to do; only the discriminator step goes through the wrapper
                loss, out = generator_step(self.forward, self.objective, _unwrap(self.discriminator), x, step,
                                           self.raw_model.last_layer, precision=self.precision, loss_scale=scale)
            ok = ok & torch.isfinite(loss.total.detach())
            micro.append((x, out.reconstruction.detach()))
            for k, v in loss.terms.items():
                totals[k] = totals.get(k, 0.0) + v.detach() * scale
            for k, v in out.stats.items():
                totals[f"codebook/{k}"] = totals.get(f"codebook/{k}", 0.0) + v.detach().float() * scale
            self.counters.images_seen += x.shape[0] * dist.world_size()

        gnorm = _grad_norm(self.gen_params, self.grad_clip)
        # the step's one host sync: whether every loss and the gradient norm are finite
        finite = dist.all_true(bool(ok & torch.isfinite(gnorm)), self.device)  # every replica steps or skips
        totals["grad_norm"] = gnorm.detach()
        totals["lr"] = lr

        disc_stepped = False
        if finite:
            self.opt_g.step()
            if self.ema is not None:
                self.ema.update(self.raw_model, step)
            if self.gan is not None and self.gan.trains_at(step):
                disc_stepped = self._train_discriminator(step, micro, totals)
            self.counters.bad_in_a_row = 0
        else:
            self.opt_g.zero_grad(set_to_none=True)
            _restore(snapshot)
            self.counters.skipped_steps += 1
            self.counters.bad_in_a_row += 1
        totals.setdefault("disc_factor", 0.0)
        # each rank updated running statistics (BatchNorm) from its own batch: keep rank 0's on all replicas
        dist.sync_buffers(self.raw_model)
        dist.sync_buffers(_unwrap(self.discriminator))
        self.counters.step += 1
        return StepResult(totals, finite, disc_stepped, micro[-1][1], micro[-1][0])

    def _train_discriminator(self, step: int, micro, totals: dict[str, torch.Tensor | float]) -> bool:
        assert self.discriminator is not None and self.opt_d is not None and self.gan is not None
        self.discriminator.requires_grad_(True)
        snapshot = _snapshot(self.discriminator)
        self.opt_d.zero_grad(set_to_none=True)
        # during the warm-up (before disc_start) the discriminator trains at full factor; the generator does not
        # see the adversarial term yet
        override = self.gan.disc_factor if step < self.gan.disc_start else None
        scale = 1.0 / len(micro)
        ok = torch.ones((), dtype=torch.bool, device=self.device)
        d_terms: dict[str, torch.Tensor] = {}
        for i, (x, recon) in enumerate(micro):
            with self._sync_context(self.discriminator, i == len(micro) - 1):
                d_loss = discriminator_step(self.objective, self.discriminator, x, recon, step,
                                            factor_override=override, precision=self.precision, loss_scale=scale)
            ok = ok & torch.isfinite(d_loss.total.detach())
            for k, v in d_loss.terms.items():
                d_terms[k] = d_terms.get(k, 0.0) + v.detach() * scale
        dnorm = _grad_norm(self.disc_params, self.grad_clip)
        finite = dist.all_true(bool(ok & torch.isfinite(dnorm)), self.device)
        if finite:
            self.opt_d.step()
            self.counters.disc_steps += 1
            totals.update(d_terms)
            totals["disc_grad_norm"] = dnorm.detach()
        else:
            self.opt_d.zero_grad(set_to_none=True)
            _restore(snapshot)
            self.counters.skipped_steps += 1
            self.logger.info(f"step {step}: non-finite discriminator loss or gradient; discriminator step skipped")
        return finite

    # ---------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until `num_steps`; returns the last validation metrics."""
        c = self.counters
        self.logger.start_progress(c.step)
        tp = Throughput()
        window: dict[str, torch.Tensor | float] = {}  # summed on the device, read once per log interval
        shown: dict[str, float] = {}  # the losses the progress bar shows (those of the last log interval)
        n_window = 0
        t_start = time.perf_counter()
        while c.step < self.num_steps:
            res = self.train_step()
            step = c.step  # completed steps
            tp.add(res.inputs.shape[0] * self.grad_accum_steps * dist.world_size())
            if not res.finite:
                self.logger.info(f"step {step - 1}: non-finite loss or gradient; step skipped "
                                 f"({c.bad_in_a_row} in a row, {c.skipped_steps} in total)")
                if c.bad_in_a_row >= self.max_bad_steps:
                    raise TrainingError(
                        f"{c.bad_in_a_row} non-finite steps in a row at step {step - 1}; training stopped. "
                        f"The last good checkpoint is in {self.ckpt.dir}. Lower train.lr, set train.grad_clip, "
                        "or use train.precision: fp32; resume with --resume once changed."
                    )
            else:
                for k, v in res.device_terms.items():
                    window[k] = window.get(k, 0.0) + v
                n_window += 1
            steps_s, img_s = tp.rates()
            log_now = n_window and (step % self.log_every == 0 or step == self.num_steps)
            if log_now:
                mean = floats({k: v / n_window for k, v in window.items()})  # the interval's one host transfer
                shown = {"loss": mean.get("total_loss", float("nan")), "rec": mean.get("rec_loss", float("nan"))}
            self.logger.progress(step, {**shown, "it/s": steps_s, "img/s": img_s})
            if log_now:
                # losses and codebook stats averaged over ranks (each rank saw its own part of the global batch)
                avg = dist.all_reduce_mean_dict(mean, self.device)
                avg.update({"steps_per_s": steps_s, "images_per_s": img_s, "disc_steps": float(c.disc_steps),
                            "skipped_steps": float(c.skipped_steps),
                            "data_skipped_files": float(getattr(self.stream, "skipped_files", 0))})
                self.logger.scalars(step, avg, "train")
                self.logger.line(step, {k: avg[k] for k in ("total_loss", "rec_loss", "quant_loss", "disc_factor",
                                                           "codebook/usage", "steps_per_s") if k in avg})
                window, n_window = {}, 0
                tp.reset()
            if self.image_every and step % self.image_every == 0:
                self.logger.image(step, "train_reconstruction", labelled_grid(res.inputs[:8], res.reconstruction[:8],
                                                                     title=f"training batch, step {step}"))
            metric = None
            if self.val_loader is not None and (step % self.validation_interval == 0 or step == self.num_steps):
                metrics = self.validate(step)
                metric = metrics.get(self.best_metric)
            if step % self.save_interval == 0 or step == self.num_steps:
                self.save(metric)
        self.logger.info(f"finished {c.step} steps in {time.perf_counter() - t_start:.1f}s "
                         f"({c.disc_steps} discriminator steps, {c.skipped_steps} skipped)")
        return self._last_val

    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Metrics on the held-out set for the raw weights (and the EMA weights when enabled)."""
        results: dict[str, float] = {}
        for tag, net in (("val", self.raw_model), ("val_ema", self.ema.shadow if self.ema else None)):
            if net is None:
                continue
            was_training = net.training
            net.eval()
            # validation must not disturb the training RNG stream (exact resume)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                metrics, grid = self.evaluate_fn(net, self._val_batches(), step=step)
            net.train(was_training)
            self.logger.scalars(step, metrics, tag)
            self.logger.line(step, metrics, tag)
            if grid is not None:
                self.logger.image(step, f"{tag}_reconstruction", grid)
            if tag == "val":
                results = metrics
        self._last_val = results
        return results

    def _val_batches(self):
        for i, batch in enumerate(self.val_loader):
            if self.val_max_batches is not None and i >= self.val_max_batches:
                break
            yield to_model_input(batch).to(self.device)

    # ---------------------------------------------------------------------------------------------------------
    def training_state(self) -> dict:
        """What a resume needs besides the weights. Under several processes this is a collective (it gathers
        every rank's RNG state), so every rank calls it; the data position is the same on every rank."""
        state = {
            "counters": asdict(self.counters),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "rng": rng_state(),
            "data": self.stream.state_dict(),
            "last_val": self._last_val,
        }
        if dist.world_size() > 1:
            state["rng_per_rank"] = dist.all_gather_object(state["rng"])  # each rank resumes its own random stream
        return state

    def load_training_state(self, state: dict) -> None:
        self.counters = Counters(**state["counters"])
        load_optimizer_state(self.opt_g, state["opt_g"], self.gen_params)
        match_param_layout(self.opt_g)  # channels_last parameters: their Adam moments in the same layout
        if self.opt_d is not None:
            load_optimizer_state(self.opt_d, state["opt_d"], self.disc_params)
            match_param_layout(self.opt_d)
        self.stream.load_state_dict(state["data"])
        self._last_val = state.get("last_val", {})
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == dist.world_size():
            set_rng_state(per_rank[dist.rank()])
        else:
            set_rng_state(state["rng"])
            if dist.world_size() > 1:
                # saved with another number of processes: derive a distinct stream per rank from the saved one
                torch.manual_seed(int(torch.randint(0, 2**62, ())) + dist.rank())

    def save(self, metric: float | None = None) -> None:
        """Rank 0 writes the checkpoint; every rank must call this (gathering the RNG states is collective)."""
        state = self.training_state()
        if dist.is_main():
            self.ckpt.save(
                self.counters.step,
                config_json=self.config_json,
                model=self.raw_model.state_dict(),
                model_ema=self.ema.state_dict() if self.ema is not None else None,
                discriminator=_unwrap(self.discriminator).state_dict() if self.discriminator is not None else None,
                training_state=state,
                metric=metric,
            )
        dist.barrier()  # no rank goes on (or reads the checkpoint) before it is complete
