"""GAN loss pieces of the VQGAN objective: discriminator losses, generator loss, start gate, adaptive weight."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

DiscLoss = Literal["hinge", "vanilla"]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_hat)))): binary cross-entropy on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISC_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean(D(x_hat)): the generator raises the discriminator's logit on its reconstructions (both losses)."""
    return -logits_fake.mean()


def adopt_weight(weight: float, step: int, threshold: int) -> float:
    """`weight` from step `threshold` on, 0 before it (the disc_start gate)."""
    return 0.0 if step < threshold else float(weight)


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """clamp(‖∇nll‖ / (‖∇g‖ + 1e-4), 0, 1e4) * disc_weight, gradients taken on `last_layer` (decoder's last conv).

    Balances the adversarial gradient against the reconstruction gradient at the decoder output. Uses
    `torch.autograd.grad(..., retain_graph=True)`, so the graph stays usable for the real backward and no `.grad`
    is written. The result is detached: it is a weight, not a path for gradients.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight
