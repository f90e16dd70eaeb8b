"""VQ-VAE-2 family: shapes for 1-3 levels, round trip, gradients, EMA codebooks, training, registry, reference keys."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import vqforge
from vqforge.errors import ConfigError
from vqforge.config.schema import Config, ModelConfig, QuantizerConfig, VQVAE2Config
from vqforge.models import registry
from vqforge.models.output import TokenizerOutput
from vqforge.models.vqvae2 import VQVAE2

LEVELS = {1: [4], 2: [4, 2], 3: [2, 2, 2]}


def make_cfg(nb_levels: int = 2, rates: list[int] | None = None, **kw) -> ModelConfig:
    v = dict(in_channels=3, hidden_channels=16, res_channels=8, nb_res_layers=1, nb_levels=nb_levels,
             embed_dim=8, nb_entries=32, scaling_rates=rates or LEVELS[nb_levels])
    v.update(kw)
    cfg = ModelConfig(family="vqvae2", variant=None, vqvae2=VQVAE2Config(**v))
    cfg.check("model")
    return cfg


def images(n: int = 2, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def codebook_tensors(model: VQVAE2) -> list[torch.Tensor]:
    """Every tensor (parameters and buffers) of the EMA quantizers."""
    out = []
    for cb in model.codebooks:
        out += list(cb.quantizer.parameters()) + list(cb.quantizer.buffers())
    return out


@pytest.mark.parametrize("nb_levels", [1, 2, 3])
def test_shapes_per_level(nb_levels):
    torch.manual_seed(0)
    rates = LEVELS[nb_levels]
    model = VQVAE2(make_cfg(nb_levels))
    x = images(2, 32)
    out = model(x)
    assert isinstance(out, TokenizerOutput)
    assert out.reconstruction.shape == x.shape
    assert isinstance(out.indices, list) and len(out.indices) == nb_levels
    # coarsest first: map k has the resolution 32 / prod(rates[: nb_levels - k])
    for k, idx in enumerate(out.indices):
        side = 32 // math.prod(rates[: nb_levels - k])
        assert idx.shape == (2, side, side)
        assert idx.dtype == torch.int64
        assert 0 <= int(idx.min()) and int(idx.max()) < 32
    assert model.index_shapes(32, 32) == [tuple(i.shape[-2:]) for i in out.indices]
    assert out.codebook_loss.dim() == 0 and torch.isfinite(out.codebook_loss)
    for k in range(nb_levels):
        assert 0 < float(out.stats[f"l{k}/usage"]) <= 1
        assert 1 <= float(out.stats[f"l{k}/perplexity"]) <= 32 + 1e-3
    usage = torch.stack([out.stats[f"l{k}/usage"] for k in range(nb_levels)]).mean()
    assert torch.allclose(out.stats["usage"], usage)
    assert "perplexity" in out.stats


def test_non_square_and_channels():
    model = VQVAE2(make_cfg(2, in_channels=1))
    out = model(images(1, 32, channels=1)[..., :16])  # (1, 1, 32, 16)
    assert out.reconstruction.shape == (1, 1, 32, 16)
    assert [tuple(i.shape) for i in out.indices] == [(1, 4, 2), (1, 8, 4)]


@pytest.mark.parametrize("nb_levels", [1, 2, 3])
def test_codebook_loss_is_sum_over_levels_with_beta(nb_levels):
    torch.manual_seed(0)
    cfg = make_cfg(nb_levels)
    beta = 0.5
    cfg.quantizer = QuantizerConfig(beta=beta)
    model = VQVAE2(cfg).eval()
    # each level's quantizer input z_l (the CodeLayer's 1x1 conv output) and indices, from forward hooks
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for layer in model.codebooks:
        z_of = {}
        layer.conv_in.register_forward_hook(lambda m, i, o, z_of=z_of: z_of.__setitem__("z", o.detach().clone()))
        layer.register_forward_hook(
            lambda m, i, o, z_of=z_of: seen.append((z_of["z"], o.indices, m.quantizer.codebook.detach().clone())))
    with torch.no_grad():
        loss = model(images(2, 32)).codebook_loss
    assert len(seen) == nb_levels
    # EMA codebooks: the loss of level l is beta * mse(sg[codebook[indices_l]], z_l), summed over the levels
    expected = torch.zeros((), dtype=torch.float64)
    for z, idx, book in seen:
        zq = book[idx].permute(0, 3, 1, 2)
        expected = expected + beta * F.mse_loss(zq.double(), z.double())
    assert float(loss) > 0
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("nb_levels", [1, 2, 3])
def test_round_trip_eval_is_exact(nb_levels):
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(nb_levels))
    x = images(2, 32)
    model.train()
    for _ in range(2):  # move BatchNorm statistics and EMA codebooks away from their initial values
        model(x)
    model.eval()
    with torch.no_grad():
        out = model(x)
        idx = model.encode(x)
        recon = model.decode(idx)
    assert all(torch.equal(a, b) for a, b in zip(idx, out.indices))
    assert torch.equal(recon, out.reconstruction)
    # decode is a function of the indices only
    with torch.no_grad():
        assert torch.equal(model.decode([i.clone() for i in idx]), recon)


def test_decode_rejects_bad_indices():
    model = VQVAE2(make_cfg(2)).eval()
    idx = model.encode(images(1, 32))
    with pytest.raises(ValueError, match="list of 2 index maps"):
        model.decode(idx[:1])
    with pytest.raises(ValueError, match="2x the size"):
        model.decode([idx[1], idx[0]])
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode([idx[0], idx[1] + 32])
    with pytest.raises(ValueError, match="divisible by the product of scaling_rates"):
        model(images(1, 36))


@pytest.mark.parametrize("nb_levels", [1, 3])
def test_every_trainable_parameter_gets_a_gradient(nb_levels):
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(nb_levels))
    # ReZero blocks start at alpha = 0, which makes their branch's gradients exactly zero at init; open them so
    # that a nonzero gradient everywhere proves every parameter is on the loss path
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".alpha"):
                p.fill_(0.5)
    x = images(2, 32)
    out = model(x)
    loss = F.l1_loss(out.reconstruction, x) + out.codebook_loss
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    assert model.last_layer is model.decoders[0].layers[-2].weight
    assert model.last_layer.grad is not None


def test_ema_codebook_not_trainable_and_updates_in_training():
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(2))
    tensors = codebook_tensors(model)
    assert tensors and not any(t.requires_grad for t in tensors)
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(t) in trainable_ids for t in tensors)

    x = images(2, 32)
    before = [cb.quantizer.codes_from_indices(torch.arange(32).view(1, 1, 32)).clone() for cb in model.codebooks]
    model.eval()
    with torch.no_grad():
        model(x)
    same = [cb.quantizer.codes_from_indices(torch.arange(32).view(1, 1, 32)) for cb in model.codebooks]
    assert all(torch.equal(a, b) for a, b in zip(before, same)), "eval forward must not move the codebooks"
    model.train()
    model(x)
    after = [cb.quantizer.codes_from_indices(torch.arange(32).view(1, 1, 32)) for cb in model.codebooks]
    assert all(not torch.equal(a, b) for a, b in zip(before, after)), "every level's codebook moves in training"


def test_few_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(2, nb_entries=16))
    # a smooth image with structure at several scales
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    x = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy]).unsqueeze(0).repeat(2, 1, 1, 1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(30):
        model.set_step(step)
        out = model(x)
        rec = F.l1_loss(out.reconstruction, x)
        opt.zero_grad()
        (rec + out.codebook_loss).backward()
        opt.step()
        losses.append(rec.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:5]) / 5, losses


def test_registry_and_build_model():
    assert "vqvae2" in registry.registered()
    cfg = Config()
    cfg.model = make_cfg(3)
    cfg.data.source = "sample_photos"
    cfg.data.resolution = 32
    cfg.check()
    model = vqforge.build_model(cfg)
    assert isinstance(model, VQVAE2)
    assert model.config is cfg.model
    for alias in ("VQVAE2", "vqvae2"):
        mcfg = make_cfg(1)
        mcfg.family = alias
        assert isinstance(registry.build(mcfg), VQVAE2)


def test_builder_rejects_unbuildable_configs():
    cfg = make_cfg(2)
    cfg.vqvae2.scaling_rates = [4]  # bypasses check(); the builder must still say what is wrong
    with pytest.raises(ConfigError, match="scaling_rates"):
        VQVAE2(cfg)
    with pytest.raises(ConfigError, match="hidden_channels"):
        VQVAE2(make_cfg(1, hidden_channels=1))


def test_bf16_autocast_trains():
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(2))
    x = images(2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.l1_loss(out.reconstruction.float(), x) + out.codebook_loss
    loss.backward()
    assert out.codebook_loss.dtype == torch.float32  # codebooks run in fp32 under autocast
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_config_fields_reach_the_model():
    cfg = make_cfg(2, rates=[2, 4], in_channels=1, hidden_channels=12, res_channels=6, nb_res_layers=3,
                   embed_dim=5, nb_entries=7)
    cfg.quantizer = QuantizerConfig(beta=0.3, decay=0.9, eps=1e-3)
    m = VQVAE2(cfg)
    assert m.encoders[0].layers[0][0].in_channels == 1 and m.decoders[0].out_conv.out_channels == 1
    assert m.encoders[1].layers[-3].out_channels == 12
    assert len(m.encoders[0].layers[-1].stack) == 3 and m.encoders[0].layers[-1].stack[0].layers[0].out_channels == 6
    assert len(m.codebooks) == 2 and all(cb.conv_in.out_channels == 5 for cb in m.codebooks)
    # strided steps per level follow the rates: level 0 goes down by 2 (one step), level 1 by 4 (two steps)
    assert sum(isinstance(s, torch.nn.Sequential) for s in m.encoders[0].layers) == 1
    assert sum(isinstance(s, torch.nn.Sequential) for s in m.encoders[1].layers) == 2
    q = m.codebooks[0].quantizer
    codes = q.codes_from_indices(torch.arange(7).view(1, 1, 7))
    assert codes.shape == (1, 5, 1, 7)
    assert q.beta == pytest.approx(0.3)
    assert q.embedding.decay == pytest.approx(0.9) and q.embedding.eps == pytest.approx(1e-3)
    assert m.index_shapes(16, 16) == [(2, 2), (8, 8)]


# ---- compatibility with the reference VQ-VAE-2 (vvvm23/vqvae-2, vqvae.py) checkpoints ------------------------------

def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _res_stack(prefix: str, c: int, r: int, n: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for b in range(n):
        p = f"{prefix}.stack.{b}"
        out |= {f"{p}.layers.0.weight": (r, c, 3, 3), **_bn(f"{p}.layers.1", r), f"{p}.layers.3.weight": (c, r, 3, 3),
                **_bn(f"{p}.layers.4", c), f"{p}.alpha": ()}
    return out


def reference_state_dict_shapes(v: VQVAE2Config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a reference VQVAE(in_channels, hidden_channels, ...) state dict, written from its
    construction rules (the spec this model must load)."""
    n, hid, d, k, res, nres = v.nb_levels, v.hidden_channels, v.embed_dim, v.nb_entries, v.res_channels, v.nb_res_layers
    out: dict[str, tuple[int, ...]] = {}
    for lvl, rate in enumerate(v.scaling_rates):
        steps = int(math.log2(rate))
        c_in, c_out = (v.in_channels if lvl == 0 else hid), hid // 2
        for t in range(steps):
            p = f"encoders.{lvl}.layers.{t}"
            out |= {f"{p}.0.weight": (c_out, c_in, 4, 4), f"{p}.0.bias": (c_out,), **_bn(f"{p}.1", c_out)}
            c_in, c_out = c_out, hid
        out |= {f"encoders.{lvl}.layers.{steps}.weight": (hid, c_in, 3, 3), f"encoders.{lvl}.layers.{steps}.bias": (hid,),
                **_bn(f"encoders.{lvl}.layers.{steps + 1}", hid), **_res_stack(f"encoders.{lvl}.layers.{steps + 2}", hid, res, nres)}
        cb_in = hid + (d if lvl < n - 1 else 0)
        out |= {f"codebooks.{lvl}.conv_in.weight": (d, cb_in, 1, 1), f"codebooks.{lvl}.conv_in.bias": (d,),
                f"codebooks.{lvl}.embed": (d, k), f"codebooks.{lvl}.cluster_size": (k,), f"codebooks.{lvl}.embed_avg": (d, k)}
        dec_out = v.in_channels if lvl == 0 else d
        out |= {f"decoders.{lvl}.layers.0.weight": (hid, d * (n - lvl), 3, 3), f"decoders.{lvl}.layers.0.bias": (hid,),
                **_res_stack(f"decoders.{lvl}.layers.1", hid, res, nres)}
        c_in, c_out = hid, hid // 2
        for t in range(steps):
            p = f"decoders.{lvl}.layers.{2 + t}"
            out |= {f"{p}.0.weight": (c_in, c_out, 4, 4), f"{p}.0.bias": (c_out,), **_bn(f"{p}.1", c_out)}
            c_in, c_out = c_out, dec_out
        out |= {f"decoders.{lvl}.layers.{2 + steps}.weight": (dec_out, c_in, 3, 3),
                f"decoders.{lvl}.layers.{2 + steps}.bias": (dec_out,), **_bn(f"decoders.{lvl}.layers.{3 + steps}", dec_out)}
    for j in range(n - 1):
        for st, rate in enumerate(v.scaling_rates[1 : n - j][::-1]):
            for t in range(int(math.log2(rate))):
                p = f"upscalers.{j}.stages.{st}"
                out |= {f"{p}.{3 * t}.weight": (d, d, 4, 4), f"{p}.{3 * t}.bias": (d,), **_bn(f"{p}.{3 * t + 1}", d)}
    return out


@pytest.mark.parametrize("nb_levels,rates", [(1, [4]), (2, [4, 2]), (3, [8, 2, 4])])
def test_reference_checkpoint_loads_strictly(nb_levels, rates):
    cfg = make_cfg(nb_levels, rates=rates, nb_res_layers=2)
    g = torch.Generator().manual_seed(1)
    ref = {}
    for key, shape in reference_state_dict_shapes(cfg.vqvae2).items():
        if key.endswith("num_batches_tracked"):
            ref[key] = torch.tensor(7)
        elif key.endswith("running_var") or key.endswith("cluster_size"):
            ref[key] = torch.rand(shape, generator=g) + 0.5
        else:
            ref[key] = torch.randn(shape, generator=g)
    model = VQVAE2(cfg)
    model.load_state_dict(ref, strict=True)  # raises on any missing, unexpected or mis-shaped key
    own = model.state_dict()
    for key, value in ref.items():
        if key.split(".")[-1] in ("embed", "embed_avg", "cluster_size") and key.startswith("codebooks."):
            continue
        assert torch.equal(own[key], value), key
    # reference codebook column i is code i
    for lvl in range(nb_levels):
        codes = model.codebooks[lvl].quantizer.codes_from_indices(torch.arange(32).view(1, 1, 32))  # (1, D, 1, 32)
        assert torch.equal(codes[0, :, 0, :], ref[f"codebooks.{lvl}.embed"])
    # the loaded model runs and round-trips
    model.eval()
    x = images(1, math.prod(rates) * 2)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model.decode(model.encode(x)), out.reconstruction)
    # and its own state dict (the quantizer's layout) reloads as well
    VQVAE2(cfg).load_state_dict(own, strict=True)


def test_reference_pt_file_loads_through_init_from_path(tmp_path):
    """The user's checkpoints are `torch.save(net.state_dict(), path)` files; model.init_from reads them."""
    from vqforge.errors import CheckpointError
    from vqforge.models.pretrained import load_weights

    cfg = make_cfg(2, nb_res_layers=2)
    g = torch.Generator().manual_seed(2)
    ref = {k: (torch.tensor(3) if k.endswith("num_batches_tracked") else torch.rand(s, generator=g) + 0.5)
           for k, s in reference_state_dict_shapes(cfg.vqvae2).items()}
    path = tmp_path / "vqvae.pt"
    torch.save(ref, path)
    model = VQVAE2(cfg)
    load_weights(model, path)
    assert torch.equal(model.codebooks[1].quantizer.embedding.weight, ref["codebooks.1.embed"].t())
    assert torch.equal(model.decoders[0].out_conv.weight, ref["decoders.0.layers.4.weight"])
    # a checkpoint of another architecture is refused, naming the keys
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(VQVAE2(make_cfg(2, nb_res_layers=1)), path)


@pytest.mark.parametrize("nb_levels,rates", [(2, [4, 2]), (3, [8, 2, 4]), (4, [2, 2, 2, 2])])
def test_forward_matches_reference_data_flow(nb_levels, rates):
    """Loaded reference weights must compute what they computed there: the reference's top-down loop, spelled out
    with its own bookkeeping (codes of the levels above, each with a count of upscaler stages applied), run on this
    model's submodules, gives the same indices and reconstruction as VQVAE2.forward."""
    torch.manual_seed(0)
    model = VQVAE2(make_cfg(nb_levels, rates=rates))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)  # alpha != 0 and non-trivial BN affine so every path matters
    model.eval()
    x = images(2, 64)

    def reference_codebook(lvl, h):
        cb = model.codebooks[lvl]
        embed = cb.quantizer.embedding.weight.t()  # the reference layout (D, K)
        z = cb.conv_in(h).permute(0, 2, 3, 1)
        flat = z.reshape(-1, z.shape[-1])
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True)
        ind = dist.argmin(1).view(*z.shape[:-1])
        return F.embedding(ind, embed.t()).permute(0, 3, 1, 2), ind

    with torch.no_grad():
        enc = []
        for e in model.encoders:
            enc.append(e(enc[-1] if enc else x))
        codes, counts, decoded, ids = [], [], [], []
        for lvl in range(nb_levels - 1, -1, -1):
            q, ind = reference_codebook(lvl, torch.cat([enc[lvl], decoded[-1]], 1) if decoded else enc[lvl])
            ids.append(ind)
            codes = [model.upscalers[i](c, counts[i]) for i, c in enumerate(codes)]
            counts = [c + 1 for c in counts]
            decoded.append(model.decoders[lvl](torch.cat([q, *codes], 1)))
            codes.append(q)
            counts.append(0)
        out = model(x)
    assert all(torch.equal(a, b) for a, b in zip(ids, out.indices))
    torch.testing.assert_close(out.reconstruction, decoded[-1], rtol=1e-5, atol=1e-5)
