"""The GAN-on generator loss backpropagates through LPIPS and the discriminator once, with the textbook gradient.

`VQGANObjective.generator_loss` computes ∂nll/∂x̂ and ∂g/∂x̂ once, uses them for the adaptive weight and hands
their weighted sum to x̂ in the final backward (instead of a second pass through LPIPS and the discriminator).
These tests pin that: values equal the plain formula bit for bit, gradients equal it to float rounding, and the
expensive backward passes run once.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vqforge.config.schema import LossConfig
from vqforge.losses.objective import VQGANObjective
from vqforge.models.output import TokenizerOutput


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts how often gradients pass through it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counter: list) -> torch.Tensor:  # type: ignore[override]
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        ctx.counter.append(1)
        return g, None


class Perceptual(nn.Module):
    """A small frozen stand-in for LPIPS: per-sample squared feature distance (N, 1, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1))
        self.requires_grad_(False)
        self.backward_passes: list = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _CountBackward.apply(y, self.backward_passes)
        return (self.net(x) - self.net(y)).square().mean(dim=(1, 2, 3), keepdim=True)


class Disc(nn.Module):
    """`batchnorm`: a BatchNorm between two convs (left in train mode, as in the generator step); `out_scale`:
    multiplies the logits (a tiny scale makes the adversarial gradient tiny, so the adaptive weight hits its clamp)."""

    def __init__(self, batchnorm: bool = False, out_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(2)
        if batchnorm:
            self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
                                      nn.Conv2d(4, 1, 4, stride=2, padding=1))
        else:
            self.conv = nn.Conv2d(3, 1, 4, stride=2, padding=1)
        self.out_scale = out_scale
        self.backward_passes: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_CountBackward.apply(x, self.backward_passes)) * self.out_scale


class Decoder(nn.Module):
    """Stands in for a tokenizer: two convs, the second one's weight is the 'last layer'."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        recon = self.conv(torch.relu(self.conv1(x)))
        return TokenizerOutput(recon, torch.zeros(x.shape[0], 4, 4, dtype=torch.long),
                               (self.conv1.weight ** 2).mean() * 0.5)


def _cfg() -> LossConfig:
    return LossConfig(perceptual_weight=0.7, pixelloss_weight=1.5, use_gan=True, disc_start=0, disc_factor=0.5,
                      disc_weight=0.8, codebook_weight=1.25)


def _plain_loss(cfg: LossConfig, perceptual: Perceptual, disc: Disc, x: torch.Tensor, out: TokenizerOutput,
                last_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook VQGAN generator loss (one graph, adaptive weight from autograd on the real losses)."""
    recon = out.reconstruction
    nll = (cfg.pixelloss_weight * (x - recon).abs() + cfg.perceptual_weight * perceptual(x, recon)).mean()
    g_loss = -disc(recon).mean()
    # the adaptive weight written out here (not the library's helper): ‖∇nll‖ / (‖∇g‖ + 1e-4) on the last layer,
    # clamped to [0, 1e4], times disc_weight
    (grad_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ratio = grad_nll.norm() / (grad_g.norm() + 1e-4)
    d_weight = ratio.clamp(0.0, 1e4).detach() * cfg.disc_weight
    total = nll + d_weight * cfg.disc_factor * g_loss + cfg.codebook_weight * out.codebook_loss
    return total, d_weight


@pytest.mark.parametrize("loss_scale,disc_kind", [(1.0, "conv"), (0.5, "conv"), (1.0, "batchnorm"), (1.0, "clamped")])
def test_generator_loss_matches_the_plain_formula(loss_scale: float, disc_kind: str) -> None:
    cfg = _cfg()
    if disc_kind == "clamped":  # a large reconstruction gradient over a vanishing adversarial one: ratio > 1e4
        cfg.pixelloss_weight = 20.0
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    disc = Disc(batchnorm=disc_kind == "batchnorm", out_scale=1e-9 if disc_kind == "clamped" else 1.0)
    perceptual, disc = Perceptual(), disc.requires_grad_(False)  # frozen in the generator step, as the trainer does

    ref_model = Decoder()
    ref_out = ref_model(x)
    ref_total, ref_w = _plain_loss(cfg, copy.deepcopy(perceptual), copy.deepcopy(disc), x, ref_out, ref_model.conv.weight)
    (ref_total * loss_scale).backward()

    model = Decoder()
    out = model(x)
    res = VQGANObjective(cfg, perceptual).generator_loss(x, out, step=0, last_layer=model.conv.weight,
                                                         discriminator=disc)
    (res.total * loss_scale).backward()

    assert res.total.item() == ref_total.item()  # same value, bit for bit
    assert res.terms["d_weight"].item() == ref_w.item()
    if disc_kind == "clamped":
        assert ref_w.item() == pytest.approx(1e4 * cfg.disc_weight)  # the clamp regime was really reached
    else:
        assert 0 < ref_w.item() < 1e3
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")
    # one backward pass each through the perceptual network and the discriminator
    assert len(perceptual.backward_passes) == 1 and len(disc.backward_passes) == 1
    assert all(p.grad is None for p in disc.parameters()) and all(p.grad is None for p in perceptual.parameters())


def test_generator_loss_without_gradients_keeps_the_plain_path() -> None:
    """Under no_grad (validation) nothing is backpropagated and d_weight is 0, as before."""
    cfg = _cfg()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    perceptual, disc, model = Perceptual(), Disc(), Decoder()
    with torch.no_grad():
        res = VQGANObjective(cfg, perceptual).generator_loss(x, model(x), step=0, last_layer=model.conv.weight,
                                                             discriminator=disc)
    assert res.terms["d_weight"].item() == 0.0 and not res.total.requires_grad
    assert perceptual.backward_passes == [] and disc.backward_passes == []
