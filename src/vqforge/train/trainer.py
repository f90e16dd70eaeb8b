"""The training loop: `Trainer.fit() → train_step() → generator_step() / discriminator_step()`.

The trainer receives its settings as one `TrainerConfig` and the built objects (see `build.py`); it never reads the
config file. What it owns is the order of operations, the counters, gradient accumulation and clipping, the
non-finite guard, validation and checkpoints. Its resumable state is the dict of parts that `Trainer.parts()` names
(`parts.py`): saving and resuming walk that dict.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
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
from .parts import (Counters, KMeansCollection, LastValidation, OptimizerState, PerRankRNG, RNGState, Stateful,
                    WeightEMAState, load_parts, save_parts)
from .schedules import lr_factor
from .snapshot import StepSnapshot
from .skips import SkipTally
from .speed import DevicePrefetcher


@dataclass
class GanSchedule:
    """When the discriminator trains. `None` in the trainer means use_gan is false (no discriminator exists)."""

    disc_start: int  # generator step from which the adversarial term counts (loss.disc_start)
    update_every: int  # discriminator step every N generator steps
    warmup_steps: int  # the discriminator starts training this many steps before disc_start
    warmup_factor: float  # the factor of the discriminator loss during the warm-up (loss.disc_factor)

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
class TrainerConfig:
    """The trainer's settings, made once from the parsed config by `build.trainer_config` (the built objects, such as
    the model, the optimizers and the data stream, are given to `Trainer` separately)."""

    num_steps: int
    lr_plan: LRPlan
    gan: GanSchedule | None = None  # None: use_gan is false, no discriminator exists
    grad_accum_steps: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"  # "fp32" or "bf16" (resolved: never "auto")
    channels_last: bool = False  # inputs in NHWC (the model's weights are converted by the builder)
    max_bad_steps: int = 10  # non-finite steps in a row before training stops
    save_interval: int = 1000
    validation_interval: int = 500
    val_max_batches: int | None = None
    best_metric: str = "psnr"
    log_every: int = 10
    image_every: int | None = None  # None: a training reconstruction grid at every validation
    config_json: str = ""  # the resolved config, written into every checkpoint


@dataclass
class StepResult:
    # loss terms and statistics of the step as they were computed: 0-dim device tensors (and plain floats), so
    # that a step needs no host sync for them; `terms` reads them as floats (one sync when asked). A discriminator
    # term is 0 where its step was skipped.
    device_terms: dict[str, torch.Tensor | float]
    applied: torch.Tensor  # 0-dim bool on the device: the generator step applied (finite on every rank)
    disc_applied: torch.Tensor | None  # the same for the discriminator step; None when it did not train this step
    reconstruction: torch.Tensor | None = None
    inputs: torch.Tensor | None = None

    @property
    def terms(self) -> dict[str, float]:
        return floats(self.device_terms)

    @property
    def finite(self) -> bool:
        """Whether the step applied (a host read when asked)."""
        return bool(self.applied)

    @property
    def disc_stepped(self) -> bool:
        """Whether the discriminator stepped (a host read when asked)."""
        return self.disc_applied is not None and bool(self.disc_applied)


def floats(values: dict[str, torch.Tensor | float], *, across_ranks: bool = False) -> dict[str, float]:
    """Device scalars -> Python floats, read to the host together (one read). `across_ranks`: the mean over ranks
    (one all-reduce first; every rank must call, with the same keys). Plain floats are taken as they are (the
    learning rate: the same on every rank)."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if keys:
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
        if across_ranks:
            dist.all_reduce_mean(stacked)
        out.update(zip(keys, stacked.tolist()))
    return {k: out[k] for k in values}


@dataclass
class DiscriminatorPass:
    """A discriminator forward/backward whose optimizer step waits for the training step's finite decision."""

    finite: torch.Tensor  # 0-dim bool on the device: losses and gradient norm finite
    snapshot: StepSnapshot  # its in-place state before its forward (put back when only its step is skipped)
    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor


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


def _grad_norm(params: list[torch.Tensor], max_norm: float | None, device: torch.device) -> torch.Tensor:
    """The total gradient norm of `params` (0-dim, on the device), clipping to `max_norm` when given. Nothing is read
    back to the host: the non-finite guard decides on the returned norm."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    # an infinite max only measures; error_if_nonfinite off: a non-finite norm is the guard's to handle (skip the step)
    return torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else math.inf, foreach=True)


def _masks_steps(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt` can skip its step on a device flag: torch's fused Adam/AdamW kernels take `found_inf` (they do
    nothing where it is 1 and take back the step count); the foreach and per-parameter ones refuse it."""
    return all(g.get("fused") for g in opt.param_groups)


def _optimizer_step(opt: torch.optim.Optimizer, applied: torch.Tensor, host_applied: bool | None) -> None:
    """Step `opt` where `applied` (0-dim bool on the device) is true. With `host_applied` (the decision already read
    back) a plain step or none; otherwise fused kernels skip on the device through `found_inf`."""
    if host_applied is not None:
        if host_applied:
            opt.step()
        return
    opt.found_inf = (~applied).float()  # read by torch.optim.Adam(W).step, fused path
    try:
        opt.step()
    finally:
        del opt.found_inf


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        model: nn.Module,
        objective: VQGANObjective,
        discriminator: nn.Module | None,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer | None,
        train_stream: Any,
        val_loader: Iterable | None,
        logger: RunLogger,
        checkpointer: Checkpointer,
        device: torch.device,
        ema: WeightEMA | None = None,
        evaluate_fn: Callable[..., dict[str, float]] | None = None,
        forward: Callable[[torch.Tensor], TokenizerOutput] | None = None,
    ):
        if (discriminator is None) != (cfg.gan is None) or (discriminator is None) != (opt_d is None):
            raise ValueError("discriminator, its optimizer and its schedule must all be given or all be None")
        self.cfg = cfg
        self.model = model
        self.raw_model = _unwrap(model)
        self.objective = objective
        self.discriminator = discriminator
        self.opt_g = opt_g
        self.opt_d = opt_d
        self.stream = train_stream
        self.val_loader = val_loader
        self.logger = logger
        self.ckpt = checkpointer
        self.device = device
        self.ema = ema
        self.evaluate_fn = evaluate_fn
        # the training forward: the model itself, or a torch.compile'd call of it (train.compile)
        self.forward = forward if forward is not None else model
        self.image_every = cfg.image_every if cfg.image_every is not None else cfg.validation_interval
        self._counters = Counters()
        self._tally: SkipTally | None = None  # skips of the steps since the host last read (skips.py)
        self.last_val = LastValidation()
        self.gen_params = [p for p in self.model.parameters() if p.requires_grad]
        self.disc_params = [p for p in discriminator.parameters() if p.requires_grad] if discriminator is not None else []

    @property
    def counters(self) -> Counters:
        """The run's counters, with the steps since the last host read folded in (one read, if any are pending)."""
        if self._tally is not None and self._tally.steps:
            self._settle(floats(self._tally.read_values()))
        return self._counters

    def _settle(self, read: dict[str, float]) -> None:
        """Fold a read of the skip tally into the counters, log the skips, and stop on `max_bad_steps` in a row."""
        if self._tally is None:
            return
        got = self._tally.settle(read, self._counters)
        self._tally = None
        c = self._counters
        first, last = got.steps
        where = f"step {first}" if first == last else f"steps {first}-{last}"
        if got.skipped:
            self.logger.info(f"{where}: {got.skipped} step(s) skipped for a non-finite loss or gradient, the last at "
                             f"step {got.last_bad} ({c.bad_in_a_row} in a row now, {c.skipped_steps} in total)")
        if got.disc_skipped:
            self.logger.info(f"{where}: non-finite discriminator loss or gradient; discriminator step skipped "
                             f"{got.disc_skipped} time(s), the last at step {got.last_disc_bad}")
        if got.worst_in_a_row >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"{got.worst_in_a_row} non-finite steps in a row (the last at step {got.last_bad}); training "
                f"stopped. The last good checkpoint is in {self.ckpt.dir}. Lower train.lr, set train.grad_clip, "
                "or use train.precision: fp32; resume with --resume once changed."
            )

    def parts(self) -> dict[str, Stateful | None]:
        """Everything a checkpoint holds, by name (`parts.py`): adding resumable state is one entry here. The names
        are the checkpoint's file and entry names; None marks a part this run does not have. Loaded in this order:
        the model before the EMA (which may start from it), `rng` before `rng_per_rank` (which overrides it)."""
        disc = _unwrap(self.discriminator)
        return {
            "model": self.raw_model,
            "kmeans": KMeansCollection(self.raw_model),  # after the model, whose loading empties the collections
            "model_ema": WeightEMAState(self.ema, self.raw_model) if self.ema is not None else None,
            "discriminator": disc,
            "counters": self.counters,
            "opt_g": OptimizerState(self.opt_g, self.gen_params),
            "opt_d": OptimizerState(self.opt_d, self.disc_params) if self.opt_d is not None else None,
            "rng": RNGState(),
            "rng_per_rank": PerRankRNG(),
            "data": self.stream,  # the position reported by the stream in use (the CUDA prefetcher's, if any)
            "last_val": self.last_val,
        }

    # ---------------------------------------------------------------------------------------------------------
    def _set_lr(self, step: int) -> float:
        plan = self.cfg.lr_plan
        f = plan.factor(step)
        for g in self.opt_g.param_groups:
            g["lr"] = plan.base_lr * f
        if self.opt_d is not None:
            fd = f if plan.disc_follows_schedule else 1.0
            for g in self.opt_d.param_groups:
                g["lr"] = plan.disc_base_lr * fd
        return plan.base_lr * f

    def _next_inputs(self) -> torch.Tensor:
        if isinstance(self.stream, DevicePrefetcher):  # CUDA: already copied and converted during the last step
            return next(self.stream)
        return self.to_input(next(self.stream).to(self.device, non_blocking=True))

    def to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W, C) uint8 batch -> (B·D, C, H, W) model input in [-1, 1], in the run's memory format."""
        x = to_model_input(batch)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _sync_context(self, module: nn.Module, last_micro_batch: bool):
        # DDP: all-reduce gradients only on the last micro-batch of an accumulation
        if not last_micro_batch and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def train_step(self) -> StepResult:
        """One generator step (and the discriminator step when the GAN schedule says so).

        Whether the generator's and the discriminator's losses and gradient norms are finite on every rank is
        decided on the device (one all-reduce of both flags, no host read): both backward passes run before that
        decision (the discriminator's uses the generator forward's detached reconstruction, so it does not depend on
        the generator's update); then each fused optimizer steps with `found_inf` (no update where the step is
        skipped), the in-place state is put back where skipped (`StepSnapshot.restore_where`), and the weight EMA
        folds in with weight 0 where skipped. The counters follow on the device (skips.py) and reach the host with the
        log interval's read. The step reads its decision back only when it must act on the host: host-side state
        changed (k-means collecting or running, ActNorm initialising) or an optimizer has no fused kernels."""
        step = self._counters.step
        self.raw_model.set_step(step)
        lr = self._set_lr(step)
        # in-place state that a non-finite step must not corrupt (EMA codebooks, k-means, BatchNorm running stats,
        # ActNorm): the generator step runs the discriminator in train mode, so its state is saved too. Its weights
        # count as trainable here (the previous step may have left them frozen): only its optimizer changes them
        if self.discriminator is not None:
            self.discriminator.requires_grad_(True)
        snapshot = StepSnapshot(self.model, _unwrap(self.discriminator))
        self.opt_g.zero_grad(set_to_none=True)
        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)  # the generator step needs no discriminator weight gradients

        totals: dict[str, torch.Tensor | float] = {}  # device scalars: no host sync until they are logged
        micro_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        ok = torch.ones((), dtype=torch.bool, device=self.device)
        n_micro = self.cfg.grad_accum_steps
        scale = 1.0 / n_micro
        for i in range(n_micro):
            x = self._next_inputs()
            with self._sync_context(self.model, i == n_micro - 1):
                # the unwrapped discriminator: its weights are frozen here, so the DDP wrapper (gradient sync) has
                # nothing to do; only the discriminator step goes through the wrapper
                loss, out = generator_step(self.forward, self.objective, _unwrap(self.discriminator), x, step,
                                           self.raw_model.last_layer, precision=self.cfg.precision, loss_scale=scale)
            ok = ok & torch.isfinite(loss.total.detach())
            micro_batches.append((x, out.reconstruction.detach()))
            for k, v in loss.terms.items():
                totals[k] = totals.get(k, 0.0) + v.detach() * scale
            for k, v in out.stats.items():
                totals[f"codebook/{k}"] = totals.get(f"codebook/{k}", 0.0) + v.detach().float() * scale
        gnorm = _grad_norm(self.gen_params, self.cfg.grad_clip, self.device)
        totals["grad_norm"] = gnorm.detach()
        totals["lr"] = lr
        flags = [ok & torch.isfinite(gnorm)]

        disc = None
        if self.cfg.gan is not None and self.cfg.gan.trains_at(step):
            disc = self._discriminator_backward(step, micro_batches)
            flags.append(disc.finite)
        # every replica steps or skips together: one all-reduce of the flags, kept on the device
        finite = dist.all_true_on_device(torch.stack(flags))
        applied = finite[0]
        disc_applied = applied & finite[1] if disc is not None else None
        # host-side state (k-means collecting or running, ActNorm initialising) can only be put back by the host:
        # such rare steps, and optimizers without fused kernels (no found_inf), read the decision back
        host = [None, None]
        if snapshot.host_changed() or (disc is not None and disc.snapshot.host_changed()) \
                or not _masks_steps(self.opt_g) or (disc is not None and not _masks_steps(self.opt_d)):
            host = [bool(v) for v in torch.stack([applied, applied if disc_applied is None else disc_applied]).tolist()]

        _optimizer_step(self.opt_g, applied, host[0])
        if disc is not None:
            _optimizer_step(self.opt_d, disc_applied, host[1])
            disc.snapshot.restore_where(~disc_applied)
            totals.update({k: torch.where(disc_applied, v, 0.0) for k, v in disc.terms.items()})
            totals["disc_grad_norm"] = torch.where(disc_applied, disc.grad_norm, 0.0)
        snapshot.restore_where(~applied)  # also undoes what both forwards wrote into the discriminator
        if host[0] is False:
            snapshot.restore_host()
        elif disc is not None and host[1] is False:
            disc.snapshot.restore_host()
        if self.ema is not None:
            self.ema.update(self.raw_model, step, applied)
        if self._tally is None:
            self._tally = SkipTally(self.device, self._counters, step)
        self._tally.record(step, applied, disc is not None, disc_applied if disc is not None else applied)
        totals.setdefault("disc_factor", 0.0)
        # each rank updated running statistics (BatchNorm) from its own batch: keep rank 0's on all replicas
        dist.sync_buffers(self.raw_model)
        dist.sync_buffers(_unwrap(self.discriminator))
        self._counters.step += 1
        return StepResult(totals, applied, disc_applied, micro_batches[-1][1], micro_batches[-1][0])

    def _discriminator_backward(self, step: int, micro_batches) -> DiscriminatorPass:
        """The discriminator's losses and gradients on the step's micro-batches (its update waits for the step's
        finite decision)."""
        assert self.discriminator is not None and self.opt_d is not None and self.cfg.gan is not None
        self.discriminator.requires_grad_(True)
        snapshot = StepSnapshot(_unwrap(self.discriminator))
        self.opt_d.zero_grad(set_to_none=True)
        # during the warm-up (before disc_start) the discriminator trains with the warm-up factor; the generator does
        # not see the adversarial term yet
        override = self.cfg.gan.warmup_factor if step < self.cfg.gan.disc_start else None
        scale = 1.0 / len(micro_batches)
        ok = torch.ones((), dtype=torch.bool, device=self.device)
        d_terms: dict[str, torch.Tensor] = {}
        for i, (x, recon) in enumerate(micro_batches):
            with self._sync_context(self.discriminator, i == len(micro_batches) - 1):
                d_loss = discriminator_step(self.objective, self.discriminator, x, recon, step,
                                            factor_override=override, precision=self.cfg.precision, loss_scale=scale)
            ok = ok & torch.isfinite(d_loss.total.detach())
            for k, v in d_loss.terms.items():
                d_terms[k] = d_terms.get(k, 0.0) + v.detach() * scale
        dnorm = _grad_norm(self.disc_params, self.cfg.grad_clip, self.device)
        return DiscriminatorPass(ok & torch.isfinite(dnorm), snapshot, d_terms, dnorm.detach())

    # ---------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train until `num_steps`; returns the last validation metrics."""
        c, cfg = self._counters, self.cfg
        self.logger.start_progress(c.step)
        tp = Throughput()
        # summed over the interval's applied steps on the device (plain floats, the learning rate, over all its
        # steps on the host), read once per log interval together with the skip tally
        window: dict[str, torch.Tensor | float] = {}
        shown: dict[str, float] = {}  # the losses the progress bar shows (those of the last log interval)
        n_steps, n_applied = 0, torch.zeros((), device=self.device)
        t_start = time.perf_counter()
        while c.step < cfg.num_steps:
            res = self.train_step()
            step = c.step  # completed steps
            tp.add(res.inputs.shape[0] * cfg.grad_accum_steps * dist.world_size())
            for k, v in res.device_terms.items():
                window[k] = window.get(k, 0.0) + (torch.where(res.applied, v, 0.0) if isinstance(v, torch.Tensor) else v)
            n_steps += 1
            n_applied = n_applied + res.applied.float()
            steps_s, img_s = tp.rates()
            avg = None
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                # losses and codebook stats averaged over the interval's applied steps and over ranks (each rank saw
                # its own part of the global batch), with the skip tally: the interval's one host read
                means = {k: (v / n_applied.clamp_min(1.0) if isinstance(v, torch.Tensor) else v / n_steps)
                         for k, v in window.items()}
                pending = self._tally.read_values() if self._tally is not None else {}  # None: settled already
                read = floats({**means, "_applied": n_applied, **pending}, across_ranks=True)
                self._settle(read)  # counters, skip lines; raises after max_bad_steps in a row
                if read.pop("_applied") > 0:  # an interval of skipped steps only has no means to log
                    avg = {k: v for k, v in read.items() if not k.startswith("_tally/")}
                    shown = {"loss": avg.get("total_loss", float("nan")), "rec": avg.get("rec_loss", float("nan"))}
                window, n_steps, n_applied = {}, 0, torch.zeros((), device=self.device)
            self.logger.progress(step, {**shown, "it/s": steps_s, "img/s": img_s})
            if avg is not None:
                avg.update({"steps_per_s": steps_s, "images_per_s": img_s, "disc_steps": float(c.disc_steps),
                            "skipped_steps": float(c.skipped_steps),
                            "data_skipped_files": float(getattr(self.stream, "skipped_files", 0))})
                self.logger.scalars(step, avg, "train")
                self.logger.line(step, {k: avg[k] for k in ("total_loss", "rec_loss", "quant_loss", "disc_factor",
                                                           "codebook/usage", "steps_per_s") if k in avg})
                tp.reset()
            if self.image_every and step % self.image_every == 0:
                self.logger.image(step, "train_reconstruction", labelled_grid(res.inputs[:8], res.reconstruction[:8],
                                                                     title=f"training batch, step {step}"))
            metric = None
            if self.val_loader is not None and (step % cfg.validation_interval == 0 or step == cfg.num_steps):
                metrics = self.validate(step)
                metric = metrics.get(cfg.best_metric)
            if step % cfg.save_interval == 0 or step == cfg.num_steps:
                self.save(metric)
        c = self.counters  # settled (the last step ended a log interval: nothing is pending)
        self.logger.info(f"finished {c.step} steps in {time.perf_counter() - t_start:.1f}s "
                         f"({c.disc_steps} discriminator steps, {c.skipped_steps} skipped)")
        return self.last_val.metrics

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
        self.last_val.metrics = results
        return results

    def _val_batches(self):
        for i, batch in enumerate(self.val_loader):
            if self.cfg.val_max_batches is not None and i >= self.cfg.val_max_batches:
                break
            yield to_model_input(batch).to(self.device)

    # ---------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{part name: state} of every part. Under several processes this is a collective (it gathers every rank's
        RNG state), so every rank calls it; the data position is the same on every rank."""
        return save_parts(self.parts())

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Load a checkpoint's parts (weights and training state, as `load_checkpoint` returns them); returns notes
        on optional parts that the checkpoint did not have and that start fresh."""
        return load_parts(self.parts(), state)

    def save(self, metric: float | None = None) -> None:
        """Rank 0 writes the checkpoint; every rank must call this (gathering the RNG states is collective)."""
        state = self.state_dict()
        if dist.is_main():
            self.ckpt.save_state(self._counters.step, state, config_json=self.cfg.config_json, metric=metric)
        dist.barrier()  # no rank goes on (or reads the checkpoint) before it is complete

