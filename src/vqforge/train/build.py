"""Build every part of a training run from a validated Config, then hand the parts to the Trainer.

This is the edge where config sections turn into objects; the trainer itself never sees the config tree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..config import Config, dump_yaml, to_dict
from ..data import build_train_stream, build_val_loader, check_data_config
from ..errors import CheckpointError, ConfigError
from ..losses.objective import build_discriminator, build_objective
from ..models.pretrained import config_json_text, load_weights
from ..models.previous import read_previous_checkpoint
from ..models.registry import build as build_model
from ..utils import resolve_device, resolve_precision
from .checkpoint import Checkpointer, load_resume_checkpoint
from .ema import WeightEMA
from .logger import RunLogger
from .optim import decay_groups
from .previous_resume import restore_previous
from .trainer import GanSchedule, LRPlan, Trainer, TrainerConfig
from .speed import (DevicePrefetcher, make_optimizer, resolve_channels_last, resolve_fused, to_channels_last,
                    training_forward)
from .validation import make_validation_fn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def effective_lr(cfg: Config) -> float:
    """train.lr, or taming's rule base_learning_rate × batch × processes × accumulation."""
    t = cfg.train
    if t.base_learning_rate is None:
        return t.lr
    return t.base_learning_rate * cfg.data.batch_size * dist.world_size() * t.grad_accum_steps


def check_gan_last_layer(model: nn.Module, use_gan: bool) -> None:
    """The adaptive GAN weight is a ratio of gradient norms at the decoder's last layer: it needs that layer trained."""
    last = getattr(model, "last_layer", None)
    if use_gan and isinstance(last, torch.Tensor) and not last.requires_grad:
        raise ConfigError("loss.use_gan", "is true but the decoder's last layer is frozen, so the adaptive GAN weight "
                          "(a ratio of gradient norms at that layer) cannot be computed",
                          "train the decoder's last layer, or set loss.use_gan: false")


def check_resume_compatible(saved_cfg: Config, cfg: Config) -> list[str]:
    """The saved run's model must be the same architecture; other differences are reported, not fatal."""
    saved, now = to_dict(saved_cfg), to_dict(cfg)
    if saved["model"] != now["model"]:
        diffs = [k for k in now["model"] if saved["model"].get(k) != now["model"].get(k)]
        raise CheckpointError(
            "cannot resume: the checkpoint was trained with a different model configuration "
            f"(differs in model.{', model.'.join(sorted(diffs))}). Resume with the config the run was started with "
            "(it is saved as config.json in the run's checkpoints), or start a new run with model.init_from set to "
            "the checkpoint to fine-tune from its weights."
        )
    if saved["loss"]["use_gan"] != now["loss"]["use_gan"]:
        raise CheckpointError("cannot resume: loss.use_gan differs from the checkpoint's; keep the run's setting or start "
                              "a new run with model.init_from")
    return sorted(s for s in now if s != "model" and saved[s] != now[s])


def trainer_config(cfg: Config, *, lr: float, precision: str, channels_last: bool, use_gan: bool) -> TrainerConfig:
    """The trainer's settings from the parsed config and the values resolved at start (learning rate, precision,
    memory format)."""
    t, lc = cfg.train, cfg.loss
    plan = LRPlan(lr, t.disc_lr if t.disc_lr is not None else lr, t.lr_schedule, t.num_steps, t.warmup_steps,
                  t.lr_decay, t.lr_decay_every, t.min_lr, disc_follows_schedule=t.disc_lr_schedule == "same")
    gan = GanSchedule(lc.disc_start, t.disc_update_every, t.disc_warmup_steps, lc.disc_factor) if use_gan else None
    return TrainerConfig(
        num_steps=t.num_steps, lr_plan=plan, gan=gan, grad_accum_steps=t.grad_accum_steps, grad_clip=t.grad_clip,
        precision=precision, channels_last=channels_last, max_bad_steps=t.max_bad_steps,
        save_interval=t.save_interval, validation_interval=t.validation_interval, val_max_batches=t.val_max_batches,
        best_metric=t.best_metric, log_every=cfg.log.every, image_every=cfg.log.image_every,
        config_json=config_json_text(cfg),
    )


@dataclass
class Run:
    trainer: Trainer
    logger: RunLogger
    run_dir: Path
    config_dict: dict


def build_run(cfg: Config, run_dir: Path, *, resume: str | None = None, warnings: list[str] = ()) -> Run:
    """Everything for `vqforge train`: model, objective, discriminator (or none), optimizers, data, logger."""
    t, lc = cfg.train, cfg.loss
    device = resolve_device(t.device)
    cfg.data.check_training_data()
    check_data_config(cfg.data)  # missing directories / empty globs fail here, before anything is built
    # a file is a checkpoint of the user's previous system (.pth.tar / .pt); a directory is a vqforge run/checkpoint
    previous = None
    if resume and Path(resume).is_file():
        previous = read_previous_checkpoint(resume)  # read before anything is built: a bad file fails fast
    resume_ckpt = load_resume_checkpoint(resume) if resume and previous is None else None

    seed_everything(t.seed)  # identical initial weights on every rank
    model = build_model(cfg.model).to(device)
    if cfg.model.init_from and resume_ckpt is None and previous is None:
        load_weights(model, cfg.model.init_from)
    objective = build_objective(lc).to(device)  # stops here if VGG weights are needed and missing
    discriminator = build_discriminator(lc)
    if discriminator is not None:
        discriminator = discriminator.to(device)

    lr = effective_lr(cfg)
    config_dict = to_dict(cfg)
    config_dict["train"]["resolved_lr"] = lr  # recorded, not read back
    config_dict["train"]["global_batch_size"] = cfg.data.batch_size * dist.world_size() * t.grad_accum_steps
    config_dict["train"]["world_size"] = dist.world_size()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolution kernels
    channels_last = resolve_channels_last(t.channels_last, device)
    if channels_last:  # before the weight EMA copies the model and the optimizers take the parameters
        to_channels_last(model, objective, discriminator)
    ema = WeightEMA(model, t.ema_decay) if t.ema_decay is not None else None
    train_model: nn.Module = dist.wrap_ddp(model, device)
    train_disc = dist.wrap_ddp(discriminator, device) if discriminator is not None else None
    check_gan_last_layer(model, lc.use_gan)
    fused = resolve_fused(t.fused_optimizer, device)
    precision = resolve_precision(t.precision, device)
    tcfg = trainer_config(cfg, lr=lr, precision=precision, channels_last=channels_last,
                          use_gan=discriminator is not None)
    # parameter groups: weight decay only on weight matrices and kernels outside the quantizer
    opt_g = make_optimizer(t.optimizer, decay_groups(model, t.weight_decay), lr, t.betas, t.weight_decay, fused=fused)
    opt_d = (make_optimizer(t.optimizer, decay_groups(discriminator, t.weight_decay), tcfg.lr_plan.disc_base_lr,
                            t.disc_betas, t.weight_decay, fused=fused)
             if discriminator is not None else None)

    stream = build_train_stream(cfg.data, t.seed, dist.rank(), dist.world_size())
    val_loader = build_val_loader(cfg.data, dist.rank(), dist.world_size()) if (cfg.data.val or cfg.data.source != "files") else None

    resume_step = int(resume_ckpt["state"]["counters"]["step"]) if resume_ckpt is not None else None
    logger = RunLogger(run_dir, cfg.log, enabled=dist.is_main(), total_steps=t.num_steps, run_name=run_dir.name,
                       config_dict=config_dict, resume_step=resume_step)
    forward = training_forward(train_model, t.compile, device, lambda msg: logger.info(f"warning: {msg}"))
    ckpt = Checkpointer(run_dir, keep_last=t.keep_last, best_metric=t.best_metric,
                        enabled=dist.is_main())
    trainer = Trainer(tcfg, model=train_model, objective=objective, discriminator=train_disc, opt_g=opt_g, opt_d=opt_d,
                      train_stream=stream, val_loader=val_loader, logger=logger, checkpointer=ckpt, device=device,
                      ema=ema, evaluate_fn=make_validation_fn(objective, cfg), forward=forward)

    # -- start-up report ------------------------------------------------------------------------------------------
    g = config_dict["train"]
    derived = (f"# derived at start: global batch {g['global_batch_size']} = data.batch_size {cfg.data.batch_size} × "
               f"{dist.world_size()} process(es) × train.grad_accum_steps {t.grad_accum_steps}; learning rate {lr:g}"
               + (f" = train.base_learning_rate {t.base_learning_rate:g} × global batch (taming's rule)"
                  if t.base_learning_rate is not None else " (train.lr)") + f"; device {device}\n")
    resolved = dump_yaml(cfg) + derived
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(resolved)
    logger.info("resolved config:\n" + resolved.rstrip())
    for w in warnings:
        logger.info(f"warning: {w}")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"model: {cfg.model.family}/{cfg.model.variant or '-'} with {n_params / 1e6:.2f}M trainable parameters")
    logger.info(f"speed: precision {precision}, channels_last {channels_last}, fused optimizer {fused}, "
                f"compile {getattr(forward, 'active', False)}"
                + (", batches prefetched to the GPU" if device.type == "cuda" else ""))
    if discriminator is None:
        logger.info("use_gan: false: no discriminator is built or trained; loss = reconstruction + perceptual + codebook")
    else:
        logger.info(f"use_gan: true: discriminator trains every {t.disc_update_every} step(s) from step {tcfg.gan.first_step}; "
                    f"adversarial term from step {lc.disc_start} (disc_factor {lc.disc_factor}, disc_weight {lc.disc_weight})")

    if resume_ckpt is not None:
        for name in check_resume_compatible(resume_ckpt["config"], cfg):
            logger.info(f"resume: section '{name}' differs from the checkpoint's; using the new values")
        for note in trainer.load_state_dict(resume_ckpt["state"]):
            logger.info(f"resume: {note}")
        logger.info(f"resumed from {resume} at step {trainer.counters.step}")
    elif previous is not None:
        report = restore_previous(previous, cfg, trainer, model, discriminator, ema)
        for line in report.lines(previous):
            logger.info(line)
        logger.info(f"resumed from {resume} at step {trainer.counters.step}")
        torch.manual_seed(t.seed + dist.rank())
    else:
        torch.manual_seed(t.seed + dist.rank())  # per-rank training randomness (e.g. Gumbel noise)
    if device.type == "cuda":  # after a resume set the stream's position
        trainer.stream = DevicePrefetcher(trainer.stream, device, trainer.to_input)
    return Run(trainer, logger, run_dir, config_dict)
