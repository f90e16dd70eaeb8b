"""Unit tests of the VQGAN losses: pixel, GAN pieces, adaptive weight, discriminator, VGG weight lookup, LPIPS,
and the objective's use_gan / disc_start semantics."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from vqforge.config.schema import LossConfig
from vqforge.errors import ConfigError
from vqforge.losses import objective, vgg
from vqforge.losses.adversarial import adaptive_weight, adopt_weight, hinge_d_loss, vanilla_d_loss
from vqforge.losses.discriminator import ActNorm, NLayerDiscriminator
from vqforge.losses.objective import VQGANObjective, build_discriminator, build_objective
from vqforge.losses.perceptual import LPIPS
from vqforge.losses.reconstruction import pixel_loss
from vqforge.losses.vgg import VGG16Features, load_vgg16_weights, resolve_vgg16_path
from vqforge.models.output import TokenizerOutput

# --------------------------------------------------------------------------------------------------- helpers


class CountingD(nn.Module):
    """A tiny discriminator that counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


class ToyDecoder(nn.Module):
    """Stands in for a tokenizer: one conv whose weight is the 'last layer'."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        recon = torch.tanh(self.conv(x))
        return TokenizerOutput(recon, torch.zeros(x.shape[0], 4, 4, dtype=torch.long),
                               (self.conv.weight ** 2).mean() * 0.5)


def _cfg(**kw) -> LossConfig:
    base = dict(perceptual_weight=0.0, use_gan=True, disc_start=10, disc_weight=0.8)
    base.update(kw)
    return LossConfig(**base)


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(VGG16Features().state_dict())  # random backbone, real shipped heads


def _x(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------- pixel and GAN parts


def test_pixel_loss_l1_l2_hand_values():
    x = torch.tensor([0.5, -1.0, 0.0]).view(1, 3, 1, 1)
    r = torch.tensor([0.0, 1.0, 0.25]).view(1, 3, 1, 1)
    assert pixel_loss(x, r, "l1").flatten().tolist() == [0.5, 2.0, 0.25]
    assert pixel_loss(x, r, "l2").flatten().tolist() == [0.25, 4.0, 0.0625]
    with pytest.raises(ValueError):
        pixel_loss(x, r, "l3")  # type: ignore[arg-type]


def test_hinge_and_vanilla_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-3.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(want, rel=1e-6)


def test_adopt_weight_gates_before_threshold():
    assert adopt_weight(0.7, 0, 5) == 0.0
    assert adopt_weight(0.7, 4, 5) == 0.0
    assert adopt_weight(0.7, 5, 5) == 0.7
    assert adopt_weight(0.7, 100, 5) == 0.7
    assert adopt_weight(1.0, 0, 0) == 1.0


def test_adaptive_weight_matches_hand_computation():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (w ** 2).sum()  # grad 2w = [2, 4] -> norm sqrt(20)
    g = 3.0 * w.sum() - (w[0] * 0.5)  # grad [2.5, 3] -> norm sqrt(15.25)
    got = adaptive_weight(nll, g, w, disc_weight=0.8)
    assert got.item() == pytest.approx(math.sqrt(20) / (math.sqrt(15.25) + 1e-4) * 0.8, rel=1e-6)
    assert not got.requires_grad
    assert w.grad is None  # autograd.grad does not write .grad
    (nll + g).backward()  # the graph was retained for the real backward
    assert w.grad is not None


def test_adaptive_weight_is_clamped():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll = (w ** 2).sum()
    g = (w * 0.0).sum()  # zero adversarial gradient -> ratio 20**0.5 / 1e-4 > 1e4
    assert adaptive_weight(nll, g, w, disc_weight=2.0).item() == pytest.approx(1e4 * 2.0)


# ---------------------------------------------------------------------------------------------- discriminator


def test_discriminator_layout_and_output_shape():
    d = NLayerDiscriminator(3, 8, 3, "batch")
    convs = [m for m in d.main if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert all(m.negative_slope == 0.2 for m in d.main if isinstance(m, nn.LeakyReLU))
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6


def test_discriminator_channel_cap_at_8x():
    d = NLayerDiscriminator(3, 4, 5, "batch")
    assert max(m.out_channels for m in d.main if isinstance(m, nn.Conv2d)) == 32


def test_discriminator_init_statistics():
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, 64, 3, "batch")
    conv_w = torch.cat([m.weight.flatten() for m in d.main if isinstance(m, nn.Conv2d)])
    bn = [m for m in d.main if isinstance(m, nn.BatchNorm2d)]
    assert conv_w.mean().abs() < 1e-3 and conv_w.std().item() == pytest.approx(0.02, rel=0.02)
    bn_w = torch.cat([m.weight for m in bn])
    assert bn_w.mean().item() == pytest.approx(1.0, abs=0.01) and bn_w.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)


def test_actnorm_data_dependent_init_and_keys():
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, 8, 2, "act")
    keys = set(d.state_dict())
    assert {"main.3.loc", "main.3.scale", "main.3.initialized", "main.2.bias"} <= keys
    act = d.main[3]
    assert isinstance(act, ActNorm) and act.initialized.item() == 0
    captured = {}
    act.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o.detach().clone()))
    d.train()
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    d(x)
    assert act.initialized.item() == 1
    out = captured["out"].transpose(0, 1).reshape(16, -1)
    assert torch.allclose(out.mean(1), torch.zeros(16), atol=1e-4)
    assert torch.allclose(out.std(1), torch.ones(16), atol=1e-3)
    loc = act.loc.detach().clone()
    d(torch.randn(4, 3, 32, 32))  # second batch: no re-initialisation
    assert torch.equal(act.loc, loc)
    # a loaded, already initialised state is kept
    fresh = NLayerDiscriminator(3, 8, 2, "act")
    fresh.load_state_dict(d.state_dict(), strict=True)
    fresh.train()
    fresh(torch.randn(4, 3, 32, 32) * 10)
    assert torch.equal(fresh.main[3].loc, loc)


def test_actnorm_eval_does_not_initialise():
    act = ActNorm(3).eval()
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(act(x), x) and act.initialized.item() == 0


def test_build_discriminator_none_without_gan():
    assert build_discriminator(LossConfig(use_gan=False)) is None
    cfg = LossConfig(use_gan=True, disc_ndf=8, disc_num_layers=2, disc_norm="act", disc_in_channels=1)
    d = build_discriminator(cfg)
    assert isinstance(d, NLayerDiscriminator)
    assert d.main[0].in_channels == 1 and d.main[0].out_channels == 8
    assert isinstance(d.main[3], ActNorm)
    assert sum(isinstance(m, nn.Conv2d) for m in d.main) == 4  # disc_num_layers 2 -> 2 + 2 convs


# ------------------------------------------------------------------------------------------ VGG weight lookup


def test_vgg_features_layer_indices_and_taps():
    net = VGG16Features()
    conv_idx = [i for i, m in enumerate(net.features) if isinstance(m, nn.Conv2d)]
    assert conv_idx == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert [i for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23]
    with torch.no_grad():
        taps = net(torch.randn(1, 3, 32, 32))
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert all((t >= 0).all() for t in taps)  # taps are ReLU outputs


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch):
    """No env var, an empty hub dir under tmp, and a downloader that records calls and fails."""
    monkeypatch.delenv(vgg.VGG16_ENV, raising=False)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    calls: list[tuple[str, Path]] = []

    def offline(url: str, dst: Path) -> None:
        calls.append((url, dst))
        raise OSError("network is unreachable")

    monkeypatch.setattr(vgg, "download_file", offline)
    return hub, calls


def test_vgg_resolution_order(tmp_path, monkeypatch, isolated_lookup):
    hub, calls = isolated_lookup
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    cache = hub / "checkpoints" / "vgg16-397923af.pth"
    for p in (explicit, env, cache):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    monkeypatch.setenv(vgg.VGG16_ENV, str(env))
    assert resolve_vgg16_path(str(explicit)) == explicit
    assert resolve_vgg16_path(None) == env
    monkeypatch.delenv(vgg.VGG16_ENV)
    assert resolve_vgg16_path(None) == cache
    assert calls == []
    cache.unlink()

    def fake_download(url: str, dst: Path) -> None:
        calls.append((url, dst))
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"downloaded")

    monkeypatch.setattr(vgg, "download_file", fake_download)
    monkeypatch.setattr(vgg, "VGG16_SHA256", hashlib.sha256(b"downloaded").hexdigest())
    assert resolve_vgg16_path(None) == cache
    assert calls == [("https://download.pytorch.org/models/vgg16-397923af.pth", cache)]
    assert cache.read_bytes() == b"downloaded"


def test_vgg_missing_explicit_or_env_file_is_an_error(tmp_path, monkeypatch, isolated_lookup):
    with pytest.raises(ConfigError, match="loss.vgg_path") as e:
        resolve_vgg16_path(str(tmp_path / "nope.pth"))
    assert "nope.pth" in str(e.value)
    monkeypatch.setenv(vgg.VGG16_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(ConfigError, match="VQFORGE_VGG16"):
        resolve_vgg16_path(None)
    assert isolated_lookup[1] == []  # never fell through to the network


def test_vgg_failed_download_gives_clear_error(isolated_lookup):
    hub, calls = isolated_lookup
    with pytest.raises(ConfigError) as e:
        load_vgg16_weights(None)
    msg = str(e.value)
    assert len(calls) == 1
    for needle in ("loss.vgg_path", "VQFORGE_VGG16", str(hub / "checkpoints" / "vgg16-397923af.pth"),
                   "perceptual_weight: 0", "network is unreachable", vgg.VGG16_URL):
        assert needle in msg


def test_vgg_wrong_hash_is_rejected(tmp_path, isolated_lookup, monkeypatch):
    bad = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="397923af") as e:
        load_vgg16_weights(str(bad))
    assert str(bad) in str(e.value)
    # a bad download is removed from the cache so the next run does not trust it
    hub, _ = isolated_lookup
    cache = hub / "checkpoints" / "vgg16-397923af.pth"

    def bad_download(url: str, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"truncated")

    monkeypatch.setattr(vgg, "download_file", bad_download)
    with pytest.raises(ConfigError, match="397923af"):
        load_vgg16_weights(None)
    assert not cache.exists()


def test_vgg_hash_is_pinned_in_full_and_read_by_the_restricted_unpickler(tmp_path, monkeypatch, isolated_lookup):
    assert len(vgg.VGG16_SHA256) == 64 and vgg.VGG16_SHA256.startswith("397923af")
    # a file that matches only the 8-hex-digit prefix is refused (32 bits are easy to collide)
    f = tmp_path / "vgg16-397923af.pth"
    f.write_bytes(b"x")
    digest = hashlib.sha256(b"x").hexdigest()
    monkeypatch.setattr(vgg, "VGG16_SHA256", digest[:8] + "0" * 56)
    with pytest.raises(ConfigError, match="SHA-256"):
        load_vgg16_weights(str(f))
    # a file with the pinned hash that holds pickled code is refused by the same unpickler as checkpoints
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"features.0.weight": RunsCode()}, f)
    monkeypatch.setattr(vgg, "VGG16_SHA256", hashlib.sha256(f.read_bytes()).hexdigest())
    with pytest.raises(ConfigError, match="contains code"):
        load_vgg16_weights(str(f))


def test_vgg_loads_torchvision_keys(tmp_path, monkeypatch, isolated_lookup):
    torch.manual_seed(0)
    sd = {f"features.{k}": v for k, v in VGG16Features().features.state_dict().items()}
    sd["classifier.6.weight"] = torch.zeros(10, 4)  # torchvision's head: ignored
    f = tmp_path / "vgg16.pth"
    torch.save(sd, f)
    monkeypatch.setattr(vgg, "VGG16_SHA256", hashlib.sha256(f.read_bytes()).hexdigest())
    got = load_vgg16_weights(str(f))
    assert set(got) == {k for k in sd if k.startswith("features.")} and len(got) == 26
    assert all(torch.equal(got[k], sd[k]) for k in got)
    # an unexpected key is an error, not silently dropped
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, f)
    monkeypatch.setattr(vgg, "VGG16_SHA256", hashlib.sha256(f.read_bytes()).hexdigest())
    with pytest.raises(ConfigError, match="extra.weight"):
        load_vgg16_weights(str(f))


def test_build_objective_loads_vgg_only_when_needed(monkeypatch, isolated_lookup):
    _, download_calls = isolated_lookup  # offline: any real lookup ends in the failing downloader
    loads: list[str | None] = []
    real_load = objective.load_vgg16_weights

    def counting_load(path):
        loads.append(path)
        return real_load(path)

    monkeypatch.setattr(objective, "load_vgg16_weights", counting_load)
    obj = build_objective(LossConfig(perceptual_weight=0.0))
    assert obj.perceptual is None and loads == [] and download_calls == []
    with pytest.raises(ConfigError, match="perceptual_weight: 0"):
        build_objective(LossConfig(perceptual_weight=1.0))
    assert loads == [None] and len(download_calls) == 1


# --------------------------------------------------------------------------------------------------- LPIPS


def test_lpips_frozen_and_always_eval(lpips):
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training and not any(m.training for m in lpips.modules())
    holder = VQGANObjective(LossConfig(perceptual_weight=1.0), lpips)
    holder.train()
    assert holder.training and not lpips.training


def test_lpips_identity_is_zero_and_positive_otherwise(lpips):
    x, y = _x(seed=1, size=32), _x(seed=2, size=32)
    with torch.no_grad():
        assert torch.equal(lpips(x, x), torch.zeros(2, 1, 1, 1))
        d = lpips(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()


def test_lpips_float32_under_autocast_and_grad_reaches_input(lpips):
    x = _x(seed=3, size=32)
    y = _x(seed=4, size=32).requires_grad_(True)
    ref = lpips(x, y.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = lpips(x.bfloat16(), y)
    assert d.dtype == torch.float32
    # same inputs outside autocast give the same numbers: the network ran in float32, not bf16
    assert torch.allclose(d.detach(), lpips(x.bfloat16(), y.detach()), atol=1e-6)
    assert torch.allclose(d.detach(), ref, rtol=0.05)  # only x was rounded to bf16
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ objective


def test_objective_requires_lpips_when_weighted():
    with pytest.raises(ConfigError, match="perceptual_weight"):
        VQGANObjective(LossConfig(perceptual_weight=1.0), None)


def test_generator_loss_without_discriminator(monkeypatch):
    calls = {"adaptive": 0}
    real_adaptive = objective.adaptive_weight

    def counting(*a, **k):
        calls["adaptive"] += 1
        return real_adaptive(*a, **k)

    monkeypatch.setattr(objective, "adaptive_weight", counting)
    model = ToyDecoder()
    obj = VQGANObjective(_cfg(use_gan=False, disc_start=0, codebook_weight=0.5, pixelloss_weight=2.0), None)
    x = _x()
    out = model(x)
    res = obj.generator_loss(x, out, step=1000, last_layer=model.conv.weight, discriminator=None)
    assert calls["adaptive"] == 0
    assert "g_loss" not in res.terms and "d_weight" not in res.terms
    assert res.terms["disc_factor"].item() == 0.0
    rec = (x - out.reconstruction).abs().mean()
    assert res.total.item() == pytest.approx((2.0 * rec + 0.5 * out.codebook_loss).item(), rel=1e-6)
    assert res.terms["rec_loss"].item() == pytest.approx(rec.item(), rel=1e-6)  # pixel part, unweighted
    assert res.terms["nll_loss"].item() == pytest.approx(2.0 * rec.item(), rel=1e-6)
    assert res.terms["p_loss"].item() == 0.0
    assert all(t.ndim == 0 and not t.requires_grad and t.dtype == torch.float32 for t in res.terms.values())
    res.total.backward()
    assert model.conv.weight.grad is not None


def test_generator_loss_gan_gate_and_adaptive_weight(monkeypatch):
    calls = {"adaptive": 0}
    real_adaptive = objective.adaptive_weight

    def counting(*a, **k):
        calls["adaptive"] += 1
        return real_adaptive(*a, **k)

    monkeypatch.setattr(objective, "adaptive_weight", counting)
    cfg = _cfg(pixel_loss="l2", disc_start=10, disc_factor=0.5, disc_weight=0.8)
    obj = VQGANObjective(cfg, None)
    model, d = ToyDecoder(), CountingD()
    x = _x()

    # before disc_start: neither the discriminator forward nor the adaptive weight is computed
    out = model(x)
    res = obj.generator_loss(x, out, step=9, last_layer=model.conv.weight, discriminator=d)
    assert d.calls == 0 and calls["adaptive"] == 0
    assert res.terms["disc_factor"].item() == 0.0 and "d_weight" not in res.terms and "g_loss" not in res.terms
    nll = (x - out.reconstruction).square().mean()
    assert res.total.item() == pytest.approx((nll + out.codebook_loss).item(), rel=1e-6)

    # from disc_start: the adversarial term is on, weighted by the adaptive weight
    d.calls = 0
    out = model(x)
    res = obj.generator_loss(x, out, step=10, last_layer=model.conv.weight, discriminator=d)
    assert d.calls == 1 and calls["adaptive"] == 1
    nll = (x - out.reconstruction).square().mean()
    g = -d(out.reconstruction).mean()
    # the adaptive weight written out (not the helper under test): clamp(‖∇nll‖ / (‖∇g‖ + 1e-4), 0, 1e4) · 0.8
    (grad_nll,) = torch.autograd.grad(nll, model.conv.weight, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g, model.conv.weight, retain_graph=True)
    want_w = (grad_nll.norm() / (grad_g.norm() + 1e-4)).clamp(0.0, 1e4) * 0.8
    assert res.terms["d_weight"].item() == pytest.approx(want_w.item(), rel=1e-5)
    assert res.terms["disc_factor"].item() == 0.5
    want_total = nll + want_w * 0.5 * g + out.codebook_loss
    assert res.total.item() == pytest.approx(want_total.item(), rel=1e-6)
    assert set(res.terms) == {"total_loss", "quant_loss", "nll_loss", "rec_loss", "p_loss", "d_weight",
                              "disc_factor", "g_loss"}

    # validation (no grad): no adaptive weight, d_weight reported as 0
    with torch.no_grad():
        res = obj.generator_loss(x, model(x), step=10, last_layer=model.conv.weight, discriminator=d)
    assert calls["adaptive"] == 1 and res.terms["d_weight"].item() == 0.0


def test_generator_loss_with_perceptual_term(lpips):
    model = ToyDecoder()
    obj = VQGANObjective(_cfg(use_gan=False, perceptual_weight=0.7, pixelloss_weight=1.5), lpips)
    x = _x(size=32)
    out = model(x)
    res = obj.generator_loss(x, out, step=0, last_layer=model.conv.weight, discriminator=None)
    with torch.no_grad():
        p = lpips(x, out.reconstruction)  # (N, 1, 1, 1)
    rec = (x - out.reconstruction).abs()
    assert res.terms["p_loss"].item() == pytest.approx(p.mean().item(), rel=1e-5)
    nll = (1.5 * rec + 0.7 * p).mean()
    assert res.terms["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert res.total.item() == pytest.approx((nll + out.codebook_loss).item(), rel=1e-5)
    res.total.backward()
    assert model.conv.weight.grad is not None and not any(q.grad is not None for q in lpips.parameters())


@pytest.mark.parametrize("kind", ["hinge", "vanilla"])
def test_discriminator_loss_gate_override_and_separate_calls(kind):
    obj = VQGANObjective(_cfg(disc_loss=kind, disc_start=10, disc_factor=0.5), None)
    d = CountingD()
    x, fake = _x(seed=5), _x(seed=6)
    res = obj.discriminator_loss(d, x, fake, step=3)
    assert d.calls == 2  # real and fake in separate calls
    assert res.total.item() == 0.0 and res.terms["disc_loss"].item() == 0.0
    fn = hinge_d_loss if kind == "hinge" else vanilla_d_loss
    with torch.no_grad():
        lr, lf = d(x), d(fake)
    assert res.terms["logits_real"].item() == pytest.approx(lr.mean().item(), rel=1e-6)
    assert res.terms["logits_fake"].item() == pytest.approx(lf.mean().item(), rel=1e-6)
    res = obj.discriminator_loss(d, x, fake, step=10)
    assert res.total.item() == pytest.approx(0.5 * fn(lr, lf).item(), rel=1e-6)
    res = obj.discriminator_loss(d, x, fake, step=3, factor_override=1.0)  # warm-up before disc_start
    assert res.total.item() == pytest.approx(fn(lr, lf).item(), rel=1e-6)
    res.total.backward()
    assert d.conv.weight.grad is not None
    assert set(res.terms) == {"disc_loss", "logits_real", "logits_fake"}
    with pytest.raises(ValueError):
        obj.discriminator_loss(d, x, fake, step=3, factor_override=-1.0)


def test_discriminator_loss_does_not_reach_generator():
    obj = VQGANObjective(_cfg(disc_start=0), None)
    model, d = ToyDecoder(), CountingD()
    x = _x()
    out = model(x)
    res = obj.discriminator_loss(d, x, out.reconstruction, step=0)  # even if the caller forgot .detach()
    res.total.backward()
    assert model.conv.weight.grad is None
