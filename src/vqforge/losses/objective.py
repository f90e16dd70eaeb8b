"""The VQGAN objective: reconstruction + perceptual + codebook (+ adaptive-weighted adversarial) terms.

Two functions, one per optimizer: `generator_loss` (tokenizer update) and `discriminator_loss`. They compute and
return a `LossOutput`; they never log, step optimizers or zero gradients — the trainer does that.

Relation to taming-transformers' `VQLPIPSWithDiscriminator` (same numbers with the defaults, names differ):
- nll = mean(pixelloss_weight * |x - x̂| + perceptual_weight * LPIPS(x, x̂)); taming ignores pixelloss_weight,
  with 1.0 both agree. taming logs this combined nll under both "nll_loss" and "rec_loss"; vqforge's `rec_loss`
  is the pixel part only (unweighted mean), `nll_loss` the combination.
- The adaptive weight is computed only when it is used (disc_factor > 0 and gradients enabled); otherwise
  `d_weight` is reported as 0. The total loss is the same either way.
- With the adversarial term on, one backward pass through LPIPS and the discriminator (down to x̂, no weight
  gradients) gives ∂nll/∂x̂ and ∂g/∂x̂; they serve the adaptive weight and, weighted, the update (the reference
  runs those two backward passes twice). Values are the same bit for bit; d_weight is too where the backward kernels
  are deterministic (CPU, or `torch.use_deterministic_algorithms`; on GPUs some backward kernels accumulate in a
  varying order, so it may differ in the last bits); parameter gradients equal the plain formula up to float
  rounding (~1e-6 relative). The discriminator gets no gradient from this loss.
- With no discriminator (`use_gan: false`) nothing adversarial runs: no discriminator forward, no adaptive-weight
  gradients, `disc_factor` is reported as 0 and `g_loss` / `d_weight` are absent from the terms (there is no
  such value, rather than a made-up 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config.schema import LossConfig
from ..errors import ConfigError, TrainingError
from ..models.output import TokenizerOutput
from .adversarial import DISC_LOSSES, adaptive_weight, adopt_weight, generator_adversarial_loss
from .discriminator import NLayerDiscriminator
from .perceptual import LPIPS
from .reconstruction import pixel_loss
from .vgg import load_vgg16_weights


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar to call .backward() on
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # detached float32 scalars, for logging


def _scalar(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A detached 0-dim float32 tensor (no host sync, unlike .item())."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(())
    return torch.tensor(float(value), device=device)


def _grads_at(recon: torch.Tensor, nll: torch.Tensor, g_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """∂nll/∂recon and ∂g_loss/∂recon. The backward stops at `recon`: nothing upstream (decoder) runs, and no
    discriminator or LPIPS weight gradient is computed; the two graphs below `recon` are freed afterwards."""
    (nll_grad,) = torch.autograd.grad(nll, recon, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, recon)
    return nll_grad, g_grad


class _GradientAt(torch.autograd.Function):
    """A zero-valued scalar whose backward hands `grad` (scaled by the incoming gradient) to `x`.

    Used to backpropagate a gradient at the reconstruction that was already computed, instead of running the
    backward of the losses that produced it a second time.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        return torch.zeros((), dtype=torch.float32, device=x.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None


class VQGANObjective(nn.Module):
    """Composes the VQGAN loss terms from a `LossConfig`.

    `perceptual` is required when `cfg.perceptual_weight > 0` (use `build_objective`, which loads it); it is an
    nn.Module child, so `.to(device)` moves it, and it stays frozen and in eval mode.
    """

    def __init__(self, cfg: LossConfig, perceptual: LPIPS | None) -> None:
        super().__init__()
        if cfg.perceptual_weight > 0 and perceptual is None:
            raise ConfigError(
                "loss.perceptual_weight",
                f"is {cfg.perceptual_weight} but no LPIPS module was given, so the perceptual term would be skipped",
                "build the objective with vqforge.losses.build_objective (it loads LPIPS), "
                "or set loss.perceptual_weight: 0",
            )
        if cfg.disc_loss not in DISC_LOSSES:
            raise ConfigError("loss.disc_loss", f"unknown discriminator loss {cfg.disc_loss!r}",
                              f"use one of {sorted(DISC_LOSSES)}")
        self.cfg = cfg
        self.perceptual = perceptual
        self._d_loss_fn = DISC_LOSSES[cfg.disc_loss]

    def generator_loss(self, x: torch.Tensor, out: TokenizerOutput, step: int, last_layer: torch.Tensor,
                       discriminator: nn.Module | None) -> LossOutput:
        """Tokenizer loss at generator step `step`.

        x: (N, C, H, W) input in [-1, 1]; out: the model's output for x; last_layer: the decoder's final conv
        weight (for the adaptive weight); discriminator: None when the GAN is off.
        total = nll + d_weight * disc_factor * g_loss + codebook_weight * codebook_loss.
        """
        cfg = self.cfg
        recon = out.reconstruction  # (N, C, H, W)
        device = recon.device
        rec = pixel_loss(x, recon, cfg.pixel_loss)  # (N, C, H, W), float32
        per_element = cfg.pixelloss_weight * rec
        if cfg.perceptual_weight > 0 and self.perceptual is not None:
            p = self.perceptual(x, recon)  # (N, 1, 1, 1), broadcast over (C, H, W) as in the reference nll
            per_element = per_element + cfg.perceptual_weight * p
            p_term = p.detach().mean()
        else:
            p_term = torch.zeros((), device=device)
        nll = per_element.mean()
        codebook = out.codebook_loss.float().mean()

        terms: dict[str, torch.Tensor] = {
            "quant_loss": _scalar(codebook, device),
            "nll_loss": _scalar(nll, device),
            "rec_loss": _scalar(rec.mean(), device),
            "p_loss": _scalar(p_term, device),
        }
        total = nll
        if discriminator is None:
            terms["disc_factor"] = _scalar(0.0, device)
        else:
            disc_factor = adopt_weight(cfg.disc_factor, step, cfg.disc_start)
            terms["disc_factor"] = _scalar(disc_factor, device)
            # before disc_start the adversarial term has weight 0: skip the discriminator forward and the adaptive
            # weight (two extra backward passes through LPIPS and the discriminator) instead of computing unused
            # values; g_loss and d_weight are then absent from the terms
            if disc_factor > 0:
                logits_fake = discriminator(recon)  # (N, 1, h, w)
                g_loss = generator_adversarial_loss(logits_fake.float())
                if torch.is_grad_enabled() and recon.requires_grad and not last_layer.requires_grad:
                    raise TrainingError("the decoder's last layer is frozen, so the adaptive GAN weight (its gradient "
                                        "norm ratio) cannot be computed; unfreeze it or set loss.use_gan: false")
                # the adaptive weight needs a graph: under torch.no_grad (validation) it is reported as 0
                if torch.is_grad_enabled() and last_layer.requires_grad and recon.requires_grad:
                    # one backward pass through LPIPS and the discriminator, down to x̂ only, serves both the
                    # adaptive weight and the update: ∂nll/∂x̂ and ∂g/∂x̂, (N, C, H, W) each (no weight gradients)
                    nll_grad, g_grad = _grads_at(recon, nll, g_loss)
                    # (x̂ · ∂L/∂x̂).sum() has L's gradient on every weight upstream of x̂, the last layer included
                    d_weight = adaptive_weight((recon * nll_grad).sum(), (recon * g_grad).sum(), last_layer,
                                               cfg.disc_weight)
                    adv_weight = d_weight * disc_factor
                    # same value as nll + d_weight·disc_factor·g_loss; its backward gives x̂ the gradient
                    # ∂nll/∂x̂ + d_weight·disc_factor·∂g/∂x̂ without a second pass through LPIPS and the discriminator
                    total = (nll.detach() + adv_weight * g_loss.detach()
                             + _GradientAt.apply(recon, nll_grad + adv_weight * g_grad))
                else:
                    d_weight = torch.zeros((), device=device)
                    total = total + d_weight * disc_factor * g_loss
                terms.update(d_weight=_scalar(d_weight, device), g_loss=_scalar(g_loss, device))
        total = total + cfg.codebook_weight * codebook
        terms["total_loss"] = _scalar(total, device)
        return LossOutput(total=total, terms=terms)

    def discriminator_loss(self, discriminator: nn.Module, x: torch.Tensor, recon_detached: torch.Tensor,
                           step: int, *, factor_override: float | None = None) -> LossOutput:
        """Discriminator loss: disc_factor * (hinge | vanilla)(D(x), D(x̂)).

        Real and fake go through the discriminator in separate calls (with BatchNorm each call normalises with
        its own batch statistics, as the reference). The factor is `adopt_weight(disc_factor, step, disc_start)`
        unless `factor_override` is given: the trainer passes it to train the discriminator before disc_start
        (warm-up), when the gate would give 0. `recon_detached` is detached again here for safety.
        """
        if factor_override is not None and factor_override < 0:
            raise ValueError(f"factor_override must be >= 0, got {factor_override}")
        logits_real = discriminator(x.detach())  # (N, 1, h, w)
        logits_fake = discriminator(recon_detached.detach())
        if factor_override is not None:
            factor = float(factor_override)
        else:
            factor = adopt_weight(self.cfg.disc_factor, step, self.cfg.disc_start)
        loss = factor * self._d_loss_fn(logits_real.float(), logits_fake.float())
        device = loss.device
        terms = {
            "disc_loss": _scalar(loss, device),
            "logits_real": _scalar(logits_real.float().mean(), device),
            "logits_fake": _scalar(logits_fake.float().mean(), device),
        }
        return LossOutput(total=loss, terms=terms)


def build_objective(cfg: LossConfig) -> VQGANObjective:
    """The objective for `cfg`. Loads the VGG16 weights only when the perceptual term is on (perceptual_weight > 0);
    a missing weight file raises ConfigError here, before training starts."""
    perceptual = LPIPS(load_vgg16_weights(cfg.vgg_path)) if cfg.perceptual_weight > 0 else None
    return VQGANObjective(cfg, perceptual)


def build_discriminator(cfg: LossConfig) -> NLayerDiscriminator | None:
    """The PatchGAN discriminator, or None when `use_gan` is false (then none is built at all)."""
    if not cfg.use_gan:
        return None
    return NLayerDiscriminator(cfg.disc_in_channels, cfg.disc_ndf, cfg.disc_num_layers, cfg.disc_norm)
