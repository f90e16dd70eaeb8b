"""Golden comparison of LPIPS, the PatchGAN discriminator and the VQGAN objective against taming-transformers.

Fixtures: /work/shared/golden/taming (see its README for the protocol). The VGG16 backbone is the README's
deterministic stand-in (no ImageNet weights here); the LPIPS linear heads are the real ones vqforge ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vqforge
from vqforge.config.schema import Config, DDConfig, LossConfig, ModelConfig
from vqforge.losses.adversarial import adaptive_weight, generator_adversarial_loss
from vqforge.losses.discriminator import NLayerDiscriminator
from vqforge.losses.objective import VQGANObjective, build_discriminator
from vqforge.losses.perceptual import LPIPS
from vqforge.models.output import TokenizerOutput

from conftest import GOLDEN
REL = 1e-5
ABS_ZERO = 1e-8  # only to compare exact zeros (step-0 discriminator loss, disc_factor) under a relative tolerance


def standin_vgg16() -> dict[str, torch.Tensor]:
    """The README's deterministic VGG16 conv weights (seed 1234, conv order, He-scaled randn, bias * 0.01)."""
    g = torch.Generator().manual_seed(1234)
    sd: dict[str, torch.Tensor] = {}
    cin = 3
    for idx, cout in zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
                         (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
        cin = cout
    return sd


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((GOLDEN / "reference.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "expected.safetensors"))


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    return LPIPS(standin_vgg16())


def _disc_state() -> dict[str, torch.Tensor]:
    raw = load_file(str(GOLDEN / "discriminator.safetensors"))
    return {k.removeprefix("loss.discriminator."): v for k, v in raw.items()}


def test_lpips_matches_reference(lpips, expected):
    with torch.no_grad():
        d_other = lpips(expected["x"], expected["x_other"])  # (2, 1, 1, 1)
        d_recon = lpips(expected["x"], expected["recon"])
    assert d_other.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d_other.flatten(), expected["lpips_x_xother"], rtol=0, atol=1e-5)
    torch.testing.assert_close(d_recon.flatten(), expected["lpips_x_recon"], rtol=0, atol=1e-5)


def test_discriminator_strict_loads_reference(reference):
    p = reference["loss_params"]
    cfg = LossConfig(use_gan=True, disc_num_layers=p["disc_num_layers"], disc_ndf=p["disc_ndf"],
                     disc_in_channels=p["disc_in_channels"], disc_norm="act" if p["use_actnorm"] else "batch")
    d = build_discriminator(cfg)
    assert isinstance(d, NLayerDiscriminator)
    state = _disc_state()
    result = d.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(d.state_dict()[k], v) for k, v in state.items())


def _loss_config(reference: dict, disc_loss: str) -> LossConfig:
    p = reference["loss_params"]
    return LossConfig(
        pixel_loss="l1", pixelloss_weight=1.0, perceptual_weight=p["perceptual_weight"],
        codebook_weight=p["codebook_weight"], use_gan=True, disc_loss=disc_loss,  # type: ignore[arg-type]
        disc_start=p["disc_start"], disc_factor=p["disc_factor"], disc_weight=p["disc_weight"],
        disc_num_layers=p["disc_num_layers"], disc_ndf=p["disc_ndf"], disc_in_channels=p["disc_in_channels"],
        disc_norm="act" if p["use_actnorm"] else "batch",
    )


def _fresh_model_and_disc(reference: dict, loss_cfg: LossConfig):
    """Reference weights loaded fresh, model and discriminator in train mode (the README's protocol)."""
    m = reference["model"]
    cfg = Config(model=ModelConfig(family="taming", variant="VQModel", n_embed=m["n_embed"], embed_dim=m["embed_dim"],
                                   ddconfig=DDConfig(**m["ddconfig"])))
    model = vqforge.build_model(cfg)
    model.load_state_dict(load_file(str(GOLDEN / "vqmodel.safetensors")), strict=True)
    disc = build_discriminator(loss_cfg)
    assert disc is not None
    disc.load_state_dict(_disc_state(), strict=True)
    return model.train(), disc.train()


def _close(ours: torch.Tensor | float, ref: float, rel: float = REL) -> bool:
    return float(ours) == pytest.approx(ref, rel=rel, abs=ABS_ZERO)


def _check_entries(reference: dict, expected: dict, lpips: LPIPS, pin_recon: bool, d_weight_rel: float,
                   names: list[str]) -> None:
    """Runs the named entries of reference.json -> losses and compares each of their keys.

    pin_recon: give the loss the reference's reconstruction values (expected.safetensors `recon`; the taming model
    has no train/eval difference, so it is also the train-mode output) while gradients still flow through our
    model's decoder, so the comparison isolates the loss code from the model's last-ulp float differences.
    """
    x = expected["x"]
    checked: set[str] = set()
    for name in names:
        ref = reference["losses"][name]
        kind, step_part, disc_loss = name.split("_")  # e.g. "g", "step100", "hinge"
        step = int(step_part.removeprefix("step"))
        loss_cfg = _loss_config(reference, disc_loss)
        objective = VQGANObjective(loss_cfg, lpips)
        model, disc = _fresh_model_and_disc(reference, loss_cfg)
        objective.train()  # LPIPS must stay in eval mode anyway
        assert not lpips.training
        out = model(x)
        recon = out.reconstruction  # (2, 3, 32, 32)
        if pin_recon:
            recon = recon + (expected["recon"] - recon).detach()  # values: reference; gradient: our decoder
            out = TokenizerOutput(recon, out.indices, out.codebook_loss, out.stats)
        done: set[str] = set()
        if kind == "g":
            res = objective.generator_loss(x, out, step, model.last_layer, disc)
            t = res.terms
            for key in ("total_loss", "quant_loss", "nll_loss", "p_loss", "disc_factor"):
                assert _close(t[key], ref[key]), (name, key, float(t[key]), ref[key])
                done.add(key)
            if ref["disc_factor"] > 0:
                assert _close(t["g_loss"], ref["g_loss"]), (name, float(t["g_loss"]), ref["g_loss"])
            else:
                # with disc_factor 0 vqforge skips the discriminator forward (g_loss is unused); check the
                # generator adversarial loss function on the same reconstruction instead
                assert "g_loss" not in t and "d_weight" not in t
                g_direct = generator_adversarial_loss(disc(recon).float())
                assert _close(g_direct, ref["g_loss"]), (name, float(g_direct), ref["g_loss"])
            done.add("g_loss")
            assert _close(res.total.detach(), ref["total_loss"])
            # taming logs its combined nll (pixel + perceptual) under "rec_loss"; vqforge calls that nll_loss and
            # keeps rec_loss for the pixel part alone, so: taming rec_loss == our nll_loss, and our rec_loss is
            # taming's rec_loss minus its p_loss (the per-sample LPIPS broadcast over pixels averages to p_loss)
            assert _close(t["nll_loss"], ref["rec_loss"]), (name, float(t["nll_loss"]), ref["rec_loss"])
            assert float(t["rec_loss"]) == pytest.approx(ref["rec_loss"] - ref["p_loss"], rel=REL)
            done.add("rec_loss")
            if ref["disc_factor"] > 0:
                w = t["d_weight"]
            else:
                # the adaptive weight is skipped while unused (reported as 0); check the function itself instead,
                # on the same graph, against the value the reference computed at this step
                g_loss = -disc(recon).mean()
                p = lpips(x, recon)  # (2, 1, 1, 1)
                nll = ((x - recon).abs() + loss_cfg.perceptual_weight * p).mean()
                w = adaptive_weight(nll, g_loss, model.last_layer, loss_cfg.disc_weight)
            assert _close(w, ref["d_weight"], rel=d_weight_rel), (name, float(w), ref["d_weight"])
            done.add("d_weight")
        else:
            res = objective.discriminator_loss(disc, x, recon.detach(), step)
            for key in ("disc_loss", "logits_real", "logits_fake"):
                assert _close(res.terms[key], ref[key]), (name, key, float(res.terms[key]), ref[key])
                done.add(key)
            assert _close(res.total.detach(), ref["disc_loss"])
        assert done == set(ref), (name, set(ref) - done)
        checked.add(name)
    assert checked == set(names)


def test_every_reference_loss_entry(reference, expected, lpips):
    """Every entry of reference.json -> losses, every key, 1e-5 relative (reconstruction values pinned)."""
    names = list(reference["losses"])
    assert len(names) == 8
    _check_entries(reference, expected, lpips, pin_recon=True, d_weight_rel=REL, names=names)


def test_reference_losses_with_our_model_forward(reference, expected, lpips):
    """The same entries end to end with our model's own reconstruction (it differs from the reference's by up to
    ~7e-6 in float32). Every loss value still agrees to 1e-5; only d_weight gets 1e-3: it is a ratio of gradient
    norms, and the LPIPS gradient through VGG's ReLU kinks turns a few-1e-6 input change into ~1e-4 relative
    (measured: 1.1e-4 here; with the pinned values above it agrees to 1e-7). The hinge entries suffice here: the
    generator entries of both losses are identical and the vanilla discriminator loss is covered above."""
    names = [n for n in reference["losses"] if n.endswith("_hinge")]
    assert len(names) == 4
    _check_entries(reference, expected, lpips, pin_recon=False, d_weight_rel=1e-3, names=names)
