"""The user's remaining model families and quantizers: OptVQ VQ-VAE-2, the VqVae, the shared-codebook RVQ (with
random-depth training and the export back to the user's layout) and product quantization.

Fixture state dicts are built here from the construction rules of the user's model code (key by key, shape by
shape, independently of vqforge's modules) and loaded strictly.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from vqforge import ConfigError, build_model
from vqforge.cli import main
from vqforge.config import parse_config
from vqforge.config.schema import DalleVQVAEConfig, DDConfig, ModelConfig, QuantizerConfig, VQVAE2OptVQConfig
from vqforge.errors import CheckpointError
from vqforge.models.user_export import save_user_checkpoint, user_state_dict
from vqforge.quantizers import (ProductEMAQuantizer, ResidualEMAVectorQuantizer, SinkhornQuantizer,
                                build_quantizer)
from vqforge.quantizers.depth import random_prefix_depth
from vqforge.quantizers.sinkhorn import normalize_cost, sinkhorn
from vqforge.quantizers.smoothed_ema import SmoothedEMAQuantizer


def as_map(z_flat: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (1, C, 1, N)."""
    return z_flat.t()[None, :, None, :].contiguous()


# ----------------------------------------------------------------------------- fixture state dicts (user's rules)

def _conv(sd: dict, p: str, cin: int, cout: int, k: int, bias: bool = True, transposed: bool = False) -> None:
    sd[p + ".weight"] = torch.randn((cin, cout, k, k) if transposed else (cout, cin, k, k))
    if bias:
        sd[p + ".bias"] = torch.randn(cout)


def _bn(sd: dict, p: str, c: int) -> None:
    sd[p + ".weight"], sd[p + ".bias"] = torch.rand(c) + 0.5, torch.randn(c)
    sd[p + ".running_mean"], sd[p + ".running_var"] = torch.randn(c), torch.rand(c) + 0.5
    sd[p + ".num_batches_tracked"] = torch.tensor(7)


def _rezero_stack(sd: dict, p: str, c: int, res: int, n: int) -> None:
    for j in range(n):
        q = f"{p}.stack.{j}"
        _conv(sd, q + ".layers.0", c, res, 3, bias=False)
        _bn(sd, q + ".layers.1", res)
        _conv(sd, q + ".layers.3", res, c, 3, bias=False)
        _bn(sd, q + ".layers.4", c)
        sd[q + ".alpha"] = torch.randn(())


def user_optvq_state_dict(in_ch=3, hid=16, res=8, nres=1, nb_levels=3, d=8, k=16, rates=(4, 2, 2), use_proj=True):
    """Keys of the user's models/vqvae2_optvq/vqvae.py VQVAE (first version), including the `encoder`, `decoder`
    and `vq_vae` attributes that register encoders[0], decoders[0] and the codebook list a second time."""
    sd: dict[str, torch.Tensor] = {}
    for lvl, rate in enumerate(rates):  # Encoder(in, hidden, res, nres, rate)
        p, c, n = f"encoders.{lvl}.layers", in_ch if lvl == 0 else hid, hid // 2
        steps = int(math.log2(rate))
        for s in range(steps):
            _conv(sd, f"{p}.{s}.0", c, n, 4)
            _bn(sd, f"{p}.{s}.1", n)
            c, n = n, hid
        _conv(sd, f"{p}.{steps}", c, n, 3)
        _bn(sd, f"{p}.{steps + 1}", n)
        _rezero_stack(sd, f"{p}.{steps + 2}", n, res, nres)
    for lvl in range(nb_levels):  # CodeLayer: conv_in + VectorQuantizerSinkhorn(embedding, proj)
        p = f"codebooks.{lvl}"
        _conv(sd, p + ".conv_in", hid + d if lvl < nb_levels - 1 else hid, d, 1)
        sd[p + ".quantizer.embedding.weight"] = torch.randn(k, d)
        if use_proj:
            sd[p + ".quantizer.proj.weight"], sd[p + ".quantizer.proj.bias"] = torch.randn(d, d), torch.randn(d)
    for lvl, rate in enumerate(rates):  # Decoder(d * (levels - lvl), hidden, out, res, nres, rate)
        p = f"decoders.{lvl}.layers"
        out = in_ch if lvl == 0 else d
        _conv(sd, f"{p}.0", d * (nb_levels - lvl), hid, 3)
        _rezero_stack(sd, f"{p}.1", hid, res, nres)
        c, n = hid, hid // 2
        steps = int(math.log2(rate))
        for s in range(steps):
            _conv(sd, f"{p}.{2 + s}.0", c, n, 4, transposed=True)
            _bn(sd, f"{p}.{2 + s}.1", n)
            c, n = n, out
        _conv(sd, f"{p}.{2 + steps}", c, n, 3)
        _bn(sd, f"{p}.{3 + steps}", n)
    for i in range(nb_levels - 1):  # Upscaler(embed_dim, rates[1:levels - i][::-1])
        for st, rate in enumerate(list(rates[1:nb_levels - i])[::-1]):
            for s in range(int(math.log2(rate))):
                _conv(sd, f"upscalers.{i}.stages.{st}.{3 * s}", d, d, 4, transposed=True)
                _bn(sd, f"upscalers.{i}.stages.{st}.{3 * s + 1}", d)
    for alias, canonical in (("encoder.", "encoders.0."), ("decoder.", "decoders.0."), ("vq_vae.", "codebooks.")):
        for key in [k for k in sd if k.startswith(canonical)]:
            sd[alias + key[len(canonical):]] = sd[key]
    return sd


def _gn(sd: dict, p: str, c: int) -> None:
    sd[p + ".gn.weight"], sd[p + ".gn.bias"] = torch.rand(c) + 0.5, torch.randn(c)


def _resblock(sd: dict, p: str, cin: int, cout: int) -> None:
    _gn(sd, p + ".block.0", cin)
    _conv(sd, p + ".block.2", cin, cout, 3)
    _gn(sd, p + ".block.3", cout)
    _conv(sd, p + ".block.5", cout, cout, 3)
    if cin != cout:
        _conv(sd, p + ".channel_up", cin, cout, 1)


def _nonlocal(sd: dict, p: str, c: int) -> None:
    _gn(sd, p + ".gn", c)
    for name in ("q", "k", "v", "proj_out"):
        _conv(sd, f"{p}.{name}", c, c, 1)


def user_vqvae_state_dict(channels=(32, 32, 32, 32, 32, 64), latent=8, k=16, image_channels=3, ema=True):
    """Keys of the user's models/vq_vae VqVae2 (first version): models/gan Encoder/Decoder with the channel lists
    replaced by `channels` (the user's are [128, 128, 128, 256, 256, 512]; the loops, including the resolution
    counter that places attention, are the user's), and VectorQuantizerEMA / VectorQuantizer."""
    sd: dict[str, torch.Tensor] = {}
    ch, i_layer, resolution = list(channels), 0, 256

    def nxt() -> str:
        nonlocal i_layer
        i_layer += 1
        return f"encoder.model.{i_layer - 1}"

    _conv(sd, nxt(), image_channels, ch[0], 3)
    for i in range(len(ch) - 1):
        cin, cout = ch[i], ch[i + 1]
        for _ in range(2):
            _resblock(sd, nxt(), cin, cout)
            cin = cout
            if resolution in (16,):
                _nonlocal(sd, nxt(), cin)
        if i != len(ch) - 2:
            _conv(sd, nxt() + ".conv", ch[i + 1], ch[i + 1], 3)
            resolution //= 2
    _resblock(sd, nxt(), ch[-1], ch[-1])
    _nonlocal(sd, nxt(), ch[-1])
    _resblock(sd, nxt(), ch[-1], ch[-1])
    _gn(sd, nxt(), ch[-1])
    nxt()  # Swish
    _conv(sd, nxt(), ch[-1], latent, 3)

    dch, i_layer, resolution = ch[1:][::-1], 0, 16

    def dn() -> str:
        nonlocal i_layer
        i_layer += 1
        return f"decoder.model.{i_layer - 1}"

    cin = dch[0]
    _conv(sd, dn(), latent, cin, 3)
    _resblock(sd, dn(), cin, cin)
    _nonlocal(sd, dn(), cin)
    _resblock(sd, dn(), cin, cin)
    for i, cout in enumerate(dch):
        for _ in range(3):
            _resblock(sd, dn(), cin, cout)
            cin = cout
            if resolution in (16,):
                _nonlocal(sd, dn(), cin)
        if i != 0:
            _conv(sd, dn() + ".conv", cin, cin, 3)
            resolution *= 2
    _gn(sd, dn(), cin)
    dn()  # Swish
    _conv(sd, dn(), cin, image_channels, 3)

    sd["vq_vae.embedding.weight"] = torch.randn(k, latent)
    if ema:
        sd["vq_vae.ema_cluster_size"] = torch.rand(k)
        sd["vq_vae.ema_w"] = torch.randn(k, latent)
    return sd


def taming_cfg(variant="EMAVQ", **quantizer) -> ModelConfig:
    dd = DDConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8, resolution=8)
    return ModelConfig(family="taming", variant=variant, n_embed=16, embed_dim=8, ddconfig=dd,
                       quantizer=QuantizerConfig(**quantizer))


def user_rvq_cfg(levels=3, **kw) -> ModelConfig:
    return taming_cfg("EMAVQ", rvq_levels=levels, shared_codebook=True, rvq_loss="prefix", **kw)


def _strict_load_equals(model: torch.nn.Module, fixture: dict) -> None:
    model.load_state_dict(fixture, strict=True)
    sd = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(v, fixture[k]), k


# --------------------------------------------------------------------------------------------------- OptVQ VQ-VAE-2

def optvq_cfg(**kw) -> ModelConfig:
    base = dict(hidden_channels=16, res_channels=8, nb_res_layers=1, nb_levels=3, embed_dim=8, nb_entries=16,
                scaling_rates=[4, 2, 2])
    base.update(kw)
    return ModelConfig(family="vqvae2_optvq", variant=None, vqvae2_optvq=VQVAE2OptVQConfig(**base))


@pytest.mark.parametrize("use_proj", [True, False])
def test_optvq_loads_the_users_state_dict_strictly(use_proj):
    torch.manual_seed(0)
    fixture = user_optvq_state_dict(use_proj=use_proj)
    model = build_model(optvq_cfg(use_proj=use_proj))
    canonical = {k: v for k, v in fixture.items() if not k.startswith(("encoder.", "decoder.", "vq_vae."))}
    assert set(model.state_dict()) == set(canonical)
    _strict_load_equals(model, fixture)
    # a duplicate that disagrees with its canonical tensor is not silently dropped
    bad = dict(fixture)
    bad["vq_vae.0.conv_in.bias"] = bad["vq_vae.0.conv_in.bias"] + 1
    with pytest.raises(RuntimeError, match="vq_vae.0.conv_in.bias"):
        model.load_state_dict(bad, strict=True)


def test_optvq_family_defaults_and_aliases():
    c = VQVAE2OptVQConfig()
    assert (c.nb_levels, c.scaling_rates, c.res_channels) == (3, [8, 4, 2], 32)
    assert (c.epsilon, c.n_iters, c.normalize_mode, c.use_prob, c.beta, c.loss_q_type, c.use_proj) == (
        10.0, 5, "all", True, 1.0, "ce", True)
    for alias in ("vqvae2optvq", "VQVAE2_OptVQ", "vqvae2_optvq", "Vqvae2OptVQ"):
        cfg = parse_config({"model_type": alias, "model_args": {"nb_entries": 16}})
        assert cfg.model.family == "vqvae2_optvq"
        assert cfg.model.vqvae2_optvq.scaling_rates == [8, 4, 2]


def test_the_users_param_json_mismatch_names_both_keys():
    # the model part of the user's P/param.json: model_type vqvae2optvq (3 levels by default), 2 scaling rates
    raw = {"model_type": "vqvae2optvq", "scaling_rates": [4, 2],
           "model_args": {"group_count": 5, "n_hid": 256, "n_blk_per_group": 1, "vocab_size": 4096, "n_init": 1024,
                          "input_channels": 3, "output_channels": 3, "commitment_cost": 0.25, "decay": 0.99}}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert "scaling_rates" in msg and "nb_levels" in msg and "[4, 2]" in msg
    raw["model_args"]["nb_levels"] = 2  # the fix the message names
    cfg = parse_config(raw)
    c = cfg.model.vqvae2_optvq
    assert (c.nb_levels, c.scaling_rates, c.nb_entries, c.embed_dim, c.hidden_channels) == (2, [4, 2], 4096, 1024, 256)
    with pytest.raises(ConfigError, match="use_norm"):
        parse_config({"model_type": "vqvae2optvq", "model_args": {"use_norm": True}})
    with pytest.raises(ConfigError, match="did you mean 'n_iters'"):
        parse_config({"model_type": "vqvae2optvq", "model_args": {"n_iter": 3}})


def test_sinkhorn_plan_is_balanced_and_spreads_codes():
    torch.manual_seed(0)
    x = torch.randn(512, 4) * 0.1 + 3.0  # every vector closest to the same few codes
    codes = torch.randn(32, 4)
    dist = torch.cdist(x, codes)
    plan = sinkhorn(normalize_cost(dist, 4, "all"), n_iters=50, epsilon=10.0)
    assert torch.allclose(plan.sum(1), torch.ones(512), atol=1e-4)
    cols = plan.sum(0)
    assert cols.max() / cols.min() < 1.5  # balanced: every code gets about N/K of the mass
    q = SinkhornQuantizer(32, 4, use_prob=False, use_proj=False)
    with torch.no_grad():
        q.embedding.weight.copy_(codes)
    train_used = q.train()(as_map(x)).indices.unique().numel()
    eval_used = q.eval()(as_map(x)).indices.unique().numel()
    assert eval_used == int(dist.argmin(1).unique().numel())  # eval: nearest code
    assert train_used > 3 * eval_used


def test_optvq_round_trip_determinism_and_gradients():
    torch.manual_seed(0)
    model = build_model(optvq_cfg())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = model.train()(x)
    (F.mse_loss(out.reconstruction, x) + out.codebook_loss).backward()
    enc_grad = model.encoders[0].layers[0][0].weight.grad
    assert enc_grad is not None and enc_grad.abs().sum() > 0
    for lvl in range(3):
        assert model.codebooks[lvl].quantizer.embedding.weight.grad.abs().sum() > 0  # the OT loss trains the codes
    model.eval()
    with torch.no_grad():
        idx = model.encode(x)
        assert [i.shape for i in idx] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]
        assert torch.equal(model.decode(idx), model(x).reconstruction)
        one = model.encode(x[:1])  # batch-independent: the Sinkhorn plan is a training-time device only
        assert all(torch.equal(a, b[:1]) for a, b in zip(one, idx))


def _sinkhorn_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x, codes = torch.randn(64, 4), torch.randn(16, 4)
        mine = x[rank * 32:(rank + 1) * 32]
        plan = sinkhorn(torch.cdist(mine, codes), n_iters=5, epsilon=2.0)
        torch.save(plan, os.path.join(out_dir, f"plan{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(worker) -> str:
    import torch.multiprocessing as mp

    tmp = tempfile.mkdtemp()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True, start_method=method)
    return tmp


def test_sinkhorn_over_two_gloo_ranks_equals_the_whole_batch():
    tmp = _run_two_ranks(_sinkhorn_worker)
    torch.manual_seed(0)
    x, codes = torch.randn(64, 4), torch.randn(16, 4)
    whole = sinkhorn(torch.cdist(x, codes), n_iters=5, epsilon=2.0)
    both = torch.cat([torch.load(os.path.join(tmp, f"plan{r}.pt")) for r in range(2)])
    assert torch.allclose(both, whole, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------- VqVae

def vqvae_cfg(decay=0.99, channels=(32, 32, 32, 32, 32, 64)) -> ModelConfig:
    return ModelConfig(family="dalle_vqvae", variant=None, dalle_vqvae=DalleVQVAEConfig(
        n_init=8, vocab_size=16, decay=decay, channels=list(channels)))


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_loads_the_users_state_dict_strictly(ema):
    torch.manual_seed(0)
    fixture = user_vqvae_state_dict(ema=ema)
    model = build_model(vqvae_cfg(decay=0.99 if ema else 0.0))
    assert set(model.state_dict()) == set(fixture)
    _strict_load_equals(model, fixture)


def test_vqvae_aliases_round_trip_and_gradients():
    for alias in ("VqVae", "vq_vae", "vqvae"):
        cfg = parse_config({"model_type": alias, "model_args": {
            "group_count": 5, "n_hid": 256, "n_blk_per_group": 1, "vocab_size": 4096, "n_init": 1024,
            "input_channels": 3, "output_channels": 3, "commitment_cost": 0.3, "decay": 0.95}})
        c = cfg.model.dalle_vqvae
        assert (cfg.model.family, c.vocab_size, c.n_init, c.commitment_cost, c.decay) == (
            "dalle_vqvae", 4096, 1024, 0.3, 0.95)
        assert c.channels == [128, 128, 128, 256, 256, 512] and c.downsample_factor == 16
    torch.manual_seed(0)
    model = build_model(vqvae_cfg())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model.train()(x)
    assert out.indices.shape == (2, 2, 2)
    (F.mse_loss(out.reconstruction, x) + out.codebook_loss).backward()
    assert model.encoder.model[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), model(x).reconstruction)


def test_smoothed_ema_update_matches_the_formula():
    torch.manual_seed(0)
    q = SmoothedEMAQuantizer(4, 2, commitment_cost=0.25, decay=0.9)
    size0, w0, e0 = q.ema_cluster_size.clone(), q.ema_w.detach().clone(), q.embedding.weight.detach().clone()
    z = torch.randn(10, 2)
    out = q.train()(as_map(z))
    idx = torch.cdist(z, e0).argmin(1)
    onehot = F.one_hot(idx, 4).float()
    size = 0.9 * size0 + 0.1 * onehot.sum(0)
    n = size.sum()
    size = (size + 1e-5) / (n + 4 * 1e-5) * n
    w = 0.9 * w0 + 0.1 * onehot.t() @ z
    assert torch.equal(out.indices.view(-1), idx)
    assert torch.allclose(q.ema_cluster_size, size) and torch.allclose(q.ema_w, w)
    assert torch.allclose(q.embedding.weight, w / size[:, None])
    assert torch.allclose(out.loss, 0.25 * F.mse_loss(e0[idx], z))


# ------------------------------------------------------------------------------------------- the user's RVQ

def test_user_rvq_keys_are_the_users_and_load_strictly():
    torch.manual_seed(0)
    single = build_model(taming_cfg("EMAVQ"))  # the user's EMAVQ tokenizer layout (taming keys)
    fixture = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in single.state_dict().items()}
    model = build_model(user_rvq_cfg())
    assert isinstance(model.quantize, ResidualEMAVectorQuantizer)
    assert {k for k in model.state_dict() if k.startswith("quantize.")} == {
        "quantize.embedding.weight", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg"}
    _strict_load_equals(model, fixture)


def test_user_rvq_forward_matches_the_users_algorithm():
    torch.manual_seed(0)
    depth, k, c, beta = 3, 16, 4, 0.25
    q = ResidualEMAVectorQuantizer(depth, k, c, beta=beta, decay=0.9)
    w0, size0, avg0 = (q.embedding.weight.clone(), q.embedding.cluster_size.clone(), q.embedding.embed_avg.clone())
    z = torch.randn(2, c, 3, 5, requires_grad=True)
    out = q.train()(z)
    # the user's ResidualEMAVectorQuantizer, step by step
    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, c)
    r, total, residuals, idxs, prefixes = zf, torch.zeros_like(zf), [], [], []
    for _ in range(depth):
        dist = r.pow(2).sum(1, keepdim=True) + w0.pow(2).sum(1) - 2 * r @ w0.t()
        i = dist.argmin(1)
        residuals.append(r)
        idxs.append(i)
        total = total + w0[i]
        prefixes.append(total.clone())
        r = r - w0[i]
    onehot = F.one_hot(torch.cat(idxs), k).float()
    size = 0.9 * size0 + 0.1 * onehot.sum(0)
    avg = 0.9 * avg0 + 0.1 * onehot.t() @ torch.cat(residuals)
    n = size.sum()
    weight = avg / ((size + q.embedding.eps) / (n + k * q.embedding.eps) * n)[:, None]
    loss = beta * sum(F.mse_loss(p, zf) for p in prefixes)
    assert torch.equal(out.indices, torch.stack(idxs, 1).view(2, 3, 5, depth).permute(0, 3, 1, 2))
    assert torch.allclose(out.quantized.detach().permute(0, 2, 3, 1).reshape(-1, c), total, atol=1e-6)
    assert torch.allclose(out.loss, loss, rtol=1e-5)
    assert torch.allclose(q.embedding.cluster_size, size) and torch.allclose(q.embedding.embed_avg, avg, atol=1e-6)
    assert torch.allclose(q.embedding.weight, weight, atol=1e-5)
    out.loss.backward()  # the loss reaches the encoder output
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_rvq_prefix_decode_is_the_sum_of_the_first_d_codewords_bitwise():
    torch.manual_seed(0)
    q = ResidualEMAVectorQuantizer(4, 32, 8).eval()
    z = torch.randn(2, 8, 3, 3)
    out = q(z)
    assert torch.equal(out.quantized, q.codes_from_indices(out.indices))
    w = q.embedding.weight
    for d in range(1, 5):
        expected = torch.zeros(2, 3, 3, 8)
        for j in range(d):
            expected = expected + w[out.indices[:, j]]
        assert torch.equal(q.codes_from_indices(out.indices[:, :d]), expected.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="1 <= D' <= 4"):
        q.codes_from_indices(torch.zeros(2, 5, 3, 3, dtype=torch.long))


def test_quantize_dropout_depths_are_a_function_of_the_step():
    q = ResidualEMAVectorQuantizer(4, 16, 4, quantize_dropout=1.0)
    z = torch.randn(1, 4, 2, 2)

    def depths(steps):
        out = []
        for s in steps:
            q.set_step(s)
            out.append(q.train()(z).indices.shape[1])
        return out

    first = depths(range(40))
    assert set(first) == {1, 2, 3, 4}  # every prefix depth is trained
    assert depths(range(40)) == first  # a resumed run (same steps) draws the same depths
    assert depths(range(20, 40)) == first[20:]
    assert first == [random_prefix_depth(s, 0, 4, 1.0) for s in range(40)]
    assert q.eval()(z).indices.shape[1] == 4  # eval: full depth
    never = ResidualEMAVectorQuantizer(4, 16, 4, quantize_dropout=0.0)
    assert never.train()(z).indices.shape[1] == 4


def test_user_rvq_options_and_refusals():
    cfg = user_rvq_cfg(kmeans_init=True, restart_unused_steps=5, quantize_dropout=0.5)
    q = build_quantizer("EMAVQ", cfg.quantizer, 16, 8, 8)
    assert isinstance(q, ResidualEMAVectorQuantizer) and q.maintenance is not None and q.quantize_dropout == 0.5
    per_level = build_quantizer("EMAVQ", QuantizerConfig(rvq_levels=3, quantize_dropout=1.0), 16, 8, 8)
    torch.manual_seed(0)
    per_level.set_step(1)
    assert per_level.train()(torch.randn(1, 8, 2, 2)).indices.shape[1] == random_prefix_depth(1, 0, 3, 1.0)
    with pytest.raises(ConfigError, match="rvq_loss"):
        build_quantizer("VQModel", QuantizerConfig(rvq_levels=3, shared_codebook=True, rvq_loss="prefix"), 16, 8, 8)
    with pytest.raises(ConfigError, match="rvq_loss"):
        parse_config({"model": {"variant": "EMAVQ", "quantizer": {"rvq_levels": 2, "rvq_loss": "prefix"}}})


def test_export_in_the_users_layout(tmp_path):
    torch.manual_seed(0)
    model = build_model(user_rvq_cfg(restart_unused_steps=3))
    model.train()(torch.rand(2, 3, 8, 8) * 2 - 1)
    cfg = parse_config({"model": {"variant": "EMAVQ", "n_embed": 16, "embed_dim": 8,
                                  "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                               "attn_resolutions": [], "z_channels": 8, "resolution": 8},
                                  "quantizer": {"rvq_levels": 3, "shared_codebook": True, "rvq_loss": "prefix",
                                                "restart_unused_steps": 3}},
                        "data": {"resolution": 8}})
    assert cfg.model == model.config
    pt = save_user_checkpoint(model, cfg, tmp_path / "user")
    ckpt = torch.load(pt, weights_only=True)
    expected = {k: v for k, v in model.state_dict().items() if "maintenance" not in k}
    assert set(ckpt["model"]) == set(expected) and "quantize.embedding.cluster_size" in ckpt["model"]
    assert all(torch.equal(ckpt["model"][k], v) for k, v in expected.items())
    args = json.loads((tmp_path / "user" / "config.json").read_text())["model_args"]
    assert (args["model_variant"], args["rvq_levels"], args["n_embed"], args["embed_dim"]) == ("EMAVQ", 3, 16, 8)
    # the user's layout loads back strictly into the same architecture
    fresh = build_model(user_rvq_cfg())
    fresh.load_state_dict(ckpt["model"], strict=True)
    # a residual VQ the previous system never had is refused with the fix
    other = build_model(taming_cfg("EMAVQ", rvq_levels=3))
    with pytest.raises(CheckpointError, match="rvq_loss: prefix"):
        user_state_dict(other, parse_config({"model": {"variant": "EMAVQ", "quantizer": {"rvq_levels": 3}}}))


# ------------------------------------------------------------------------------------------ product quantization

def test_pq_index_layout_bits_and_keys():
    torch.manual_seed(0)
    q = ProductEMAQuantizer(8, 12, 3).eval()
    assert q.bits_per_token == 3 * 3.0
    z = torch.randn(2, 12, 2, 3)
    out = q(z)
    assert out.indices.shape == (2, 3, 2, 3)
    zf = z.permute(0, 2, 3, 1)  # (B, H, W, C)
    for s in range(3):
        sub = zf[..., 4 * s:4 * (s + 1)].reshape(-1, 4)
        nearest = torch.cdist(sub, q.codebooks[s].weight).argmin(1)
        assert torch.equal(out.indices[:, s].reshape(-1), nearest)  # subspace s = channels [4s, 4s+4)
    assert torch.equal(out.quantized, q.codes_from_indices(out.indices))
    model = build_model(taming_cfg("PQEMAVQ", num_subspaces=4))
    assert model.index_levels == 4
    assert {k for k in model.state_dict() if k.startswith("quantize.")} == {
        f"quantize.codebooks.{s}.{n}" for s in range(4) for n in ("weight", "cluster_size", "embed_avg")}
    fixture = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    _strict_load_equals(model, fixture)
    with pytest.raises(ConfigError, match="num_subspaces"):
        parse_config({"model": {"variant": "PQEMAVQ", "embed_dim": 10, "quantizer": {"num_subspaces": 4}}})


def test_pq_ema_update_per_subspace():
    torch.manual_seed(0)
    q = ProductEMAQuantizer(4, 4, 2, decay=0.5)
    before = [b.weight.clone() for b in q.codebooks]
    sizes = [b.cluster_size.clone() for b in q.codebooks]
    avgs = [b.embed_avg.clone() for b in q.codebooks]
    z = torch.randn(6, 4)
    out = q.train()(as_map(z))
    for s in range(2):
        zs = z[:, 2 * s:2 * s + 2]
        idx = torch.cdist(zs, before[s]).argmin(1)
        assert torch.equal(out.indices[0, s, 0], idx)
        onehot = F.one_hot(idx, 4).float()
        assert torch.allclose(q.codebooks[s].cluster_size, 0.5 * sizes[s] + 0.5 * onehot.sum(0))
        assert torch.allclose(q.codebooks[s].embed_avg, 0.5 * avgs[s] + 0.5 * onehot.t() @ zs)
    assert torch.allclose(out.loss, 0.25 * F.mse_loss(torch.cat([before[s][out.indices[0, s, 0]] for s in range(2)], 1), z))


# ------------------------------------------------------------------------ EMA statistics across two gloo ranks

def _ema_quantizers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"rvq": ResidualEMAVectorQuantizer(3, 8, 4, decay=0.9, quantize_dropout=1.0),
            "pq": ProductEMAQuantizer(8, 4, 2, decay=0.9),
            "smoothed": SmoothedEMAQuantizer(8, 4, decay=0.9)}


def _ema_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        qs = _ema_quantizers()
        torch.manual_seed(1)
        data = [torch.randn(2, 4, 2, 4) for _ in range(3)]
        depths = []
        for step, z in enumerate(data):
            for q in qs.values():
                q.set_step(step)
                out = q.train()(z[rank:rank + 1])  # each rank sees half of every batch
                if q is qs["rvq"]:
                    depths.append(out.indices.shape[1])
        state = {f"{n}.{k}": v for n, q in qs.items() for k, v in q.state_dict().items()}
        torch.save({"state": state, "depths": depths}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ema_statistics_identical_across_two_gloo_ranks_and_equal_to_the_whole_batch():
    tmp = _run_two_ranks(_ema_worker)
    r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2))
    assert r0["depths"] == r1["depths"]  # the random depth is drawn identically without communication
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # one process on the whole batch reaches the same codebooks (the all-reduce sums what the ranks saw)
    qs = _ema_quantizers()
    torch.manual_seed(1)
    for step, z in enumerate([torch.randn(2, 4, 2, 4) for _ in range(3)]):
        for q in qs.values():
            q.set_step(step)
            q.train()(z)
    for n, q in qs.items():
        for k, v in q.state_dict().items():
            assert torch.allclose(r0["state"][f"{n}.{k}"], v, atol=1e-5), f"{n}.{k}"


# ------------------------------------------------------------- configs of the user's layout: check-config + train

TINY_TRAIN = {"num_steps": 2, "lr": 1e-4, "use_gan": False, "save_interval": 2, "validation_interval": 2,
              "val_max_batches": 1}
USER_CONFIGS = {
    "optvq": {"model_type": "VQVAE2_OptVQ", "scaling_rates": [4, 2],
              "model_args": {"nb_levels": 2, "n_hid": 16, "res_channels": 8, "nb_res_layers": 1, "n_init": 8,
                             "vocab_size": 16, "n_iters": 3, "decay": 0.99}},
    "vqvae": {"model_type": "VqVae",
              "model_args": {"group_count": 2, "n_hid": 64, "n_blk_per_group": 1, "vocab_size": 16, "n_init": 8,
                             "input_channels": 3, "output_channels": 3, "commitment_cost": 0.25, "decay": 0.99}},
    "rvq": {"model_type": "TamingVQGAN",
            "model_args": {"model_variant": "EMAVQ", "n_embed": 16, "embed_dim": 8, "rvq_levels": 3,
                           "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3,
                                        "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                        "attn_resolutions": [], "dropout": 0.0}}},
    "pq": {"model_type": "TamingVQGAN",
           "model_args": {"model_variant": "PQEMAVQ", "n_embed": 16, "embed_dim": 8, "pq_num_subspaces": 4,
                          "pq_decay": 0.95, "pq_eps": 1e-5,
                          "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3,
                                       "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                       "attn_resolutions": [], "dropout": 0.0}}},
}


# the residual and product quantizers are keys of the user's later format (data / train / wandb sections)
LATER_FORMAT = ("rvq", "pq")


def _user_file(name: str) -> dict:
    raw = json.loads(json.dumps(USER_CONFIGS[name]))
    if name in LATER_FORMAT:
        raw["data"] = {"batch_size": 2, "resolution": 32}
        raw["train"] = {"num_steps": 2, "lr": 1e-4, "save_interval": 2, "validation_interval": 2}
        raw["wandb"] = {"enabled": False}
    else:
        raw["train_args"] = dict(TINY_TRAIN)
        raw["data_args"] = {"batch_size": 2, "source": "sample_photos"}
    return raw


@pytest.mark.parametrize("name", list(USER_CONFIGS))
def test_user_layout_configs_check_and_train(name, tmp_path, capsys):
    raw = _user_file(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    cfg = parse_config(raw)
    sets = ["--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "loss.perceptual_weight=0",
            "--set", "data.source=sample_photos", "--set", "data.resolution=32", "--set", "data.resize=40",
            "--set", "train.val_max_batches=1"]
    if name in LATER_FORMAT:
        sets += ["--set", "loss.use_gan=false", "--set", "data.num_workers=0"]
    if name == "optvq":
        assert cfg.model.family == "vqvae2_optvq" and cfg.model.vqvae2_optvq.n_iters == 3
        assert "model_args.decay: has no effect" in printed
    if name == "vqvae":
        assert cfg.model.family == "dalle_vqvae"
        assert "model_args.group_count: has no effect" in printed
        sets += ["--set", "model.dalle_vqvae.channels=[32, 32, 64]"]  # the user's widths are fixed; keep it tiny
    if name == "rvq":
        q = cfg.model.quantizer
        assert (q.rvq_levels, q.shared_codebook, q.rvq_loss) == (3, True, "prefix")
    if name == "pq":
        q = cfg.model.quantizer
        assert (cfg.model.variant, q.num_subspaces, q.decay) == ("PQEMAVQ", 4, 0.95)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), *sets]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_user_rvq_levels_meanings_in_the_users_configs():
    base = _user_file("rvq")
    base["model_args"]["num_quantizers"] = 3  # the alias, same value: fine
    assert parse_config(base).model.quantizer.rvq_levels == 3
    base["model_args"]["num_quantizers"] = 4  # the later train.py let rvq_levels win silently: it wins, with a note
    assert parse_config(base).model.quantizer.rvq_levels == 3
    vq = _user_file("rvq")
    vq["model_args"]["model_variant"] = "VQModel"  # the user's system ignored rvq_levels here
    cfg = parse_config(vq)
    assert cfg.model.variant == "VQModel" and cfg.model.quantizer.rvq_levels == 1
