"""FSQ, SimVQ and LFQ: invariants, exact entropy terms, frozen codebook, fp32 under bf16, model.quantizer.type
choices and contradictions, VQ-VAE-2 levels, DDP entropy, and training / resume / export through the real paths."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from typing import Callable

import pytest
import torch
import yaml

import vqforge
from vqforge.config import parse_config, parse_config_with_warnings
from vqforge.config.schema import QuantizerConfig
from vqforge.errors import ConfigError
from vqforge.models.registry import build
from vqforge.quantizers import FSQuantizer, LookupFreeQuantizer, Quantizer, SimVQuantizer, build_quantizer
from vqforge.quantizers import lfq as lfq_mod
from vqforge.quantizers.lfq import batch_entropy, bernoulli_entropy

from conftest import tiny_dict

C = 8  # input channels of every quantizer here

KINDS: dict[str, Callable[[], Quantizer]] = {
    "fsq": lambda: FSQuantizer([5, 4, 3, 2, 3, 4, 5, 6], C),  # embed_dim == len(levels): no projection
    "fsq_proj": lambda: FSQuantizer([4, 3, 5], C),
    "simvq": lambda: SimVQuantizer(32, C, beta=0.3),
    "lfq": lambda: LookupFreeQuantizer(256, C, sample_entropy_weight=0.2, batch_entropy_weight=0.3),  # 8 bits
    "lfq_proj": lambda: LookupFreeQuantizer(32, C, temperature=0.5),
    "lfq_groups": lambda: LookupFreeQuantizer(256, C, entropy_groups=3),
}


def make(kind: str, seed: int = 0) -> tuple[Quantizer, torch.Tensor]:
    torch.manual_seed(seed)
    q = KINDS[kind]()
    return q, torch.randn(3, C, 5, 6)


# ---------------------------------------------------------------- invariants over every kind


@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_stats_are_exact(kind: str) -> None:
    q, z = make(kind)
    q.train()
    out = q(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (3, 5, 6) and out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < q.num_codes
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    # usage is exactly (distinct codes) / K and perplexity exp(entropy) of the histogram, as for the codebook VQs
    flat = out.indices.reshape(-1)
    assert float(out.stats["usage"]) == pytest.approx(flat.unique().numel() / q.num_codes, rel=1e-6)
    p = torch.bincount(flat, minlength=q.num_codes).double() / flat.numel()
    assert float(out.stats["perplexity"]) == pytest.approx(math.exp(float(-torch.special.xlogy(p, p).sum())), rel=1e-5)
    for v in out.stats.values():
        assert not v.requires_grad


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_reach_the_input_and_every_trainable_parameter(kind: str) -> None:
    q, z = make(kind)
    q.train()
    z.requires_grad_(True)
    out = q(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().add(out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    for name, p in q.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{kind}: {name} got no gradient"
        else:
            assert p.grad is None, f"{kind}: frozen {name} got a gradient"


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_quantized_equals_codes_from_indices_exactly(kind: str) -> None:
    q, z = make(kind)
    q.train()
    q(z)
    q.eval()
    with torch.no_grad():
        out, again = q(z), q(z)
    assert torch.equal(out.quantized, q.codes_from_indices(out.indices))
    assert torch.equal(out.indices, again.indices)


@pytest.mark.parametrize("kind", list(KINDS))
def test_quantizer_math_is_float32_under_bf16_autocast(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    q, z = make(kind)
    q.train()
    z = (2 * z).bfloat16()
    seen = []
    real = q.quantize_flat

    def spy(z_flat, *args, **kwargs):
        seen.append(("in", z_flat.dtype, torch.is_autocast_enabled("cpu")))
        out = real(z_flat, *args, **kwargs)
        seen.append(("out", out[0].dtype, torch.is_autocast_enabled("cpu")))  # after project_out, if any
        return out

    monkeypatch.setattr(q, "quantize_flat", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = q(z)
    assert seen == [("in", torch.float32, False), ("out", torch.float32, False)]
    assert auto.quantized.dtype == torch.bfloat16 and auto.loss.dtype == torch.float32
    monkeypatch.undo()
    assert torch.equal(auto.indices, q(z.float()).indices)


# ---------------------------------------------------------------- FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [3, 4, 2], [7]])
def test_fsq_indices_and_codes_are_a_bijection_over_all_k_codes(levels: list[int]) -> None:
    q = FSQuantizer(levels, len(levels)).eval()
    k = math.prod(levels)
    assert q.num_codes == k and list(q.parameters()) == []
    every = torch.arange(k)
    codes = q.indices_to_codes(every)  # (K, d)
    assert codes.unique(dim=0).shape[0] == k, "two indices share a code"
    assert torch.equal(q.codes_to_indices(codes), every)
    assert codes.min() >= -1 and codes.max() <= 1
    # a pre-image of every code goes through the real forward (bound, round) to that code's index
    hw = q._half_width
    target = (codes * hw).clamp(-q._half - q._offset + 1e-2, q._half - q._offset - 1e-2)  # inside the rounding cell
    z = torch.atanh((target + q._offset) / q._half) - q._shift  # (K, d)
    out = q(z.t().reshape(1, len(levels), 1, k))
    assert torch.equal(out.indices.reshape(-1), every)
    assert float(out.stats["usage"]) == 1.0
    assert float(out.loss) == 0.0


def test_fsq_mixed_radix_layout() -> None:
    q = FSQuantizer([8, 5, 3], 3)
    # channel 0 is the least significant digit; digit = level index from the bottom of each channel's grid
    codes = torch.tensor([[-1.0, -1.0, -1.0], [-0.75, -1.0, -1.0], [-1.0, -0.5, -1.0], [-1.0, -1.0, 0.0]])
    assert q.codes_to_indices(codes).tolist() == [0, 1, 8, 40]


# ---------------------------------------------------------------- LFQ


def _brute_entropies(h: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token and batch entropy of softmax(-||h - c||² / τ) over every c in {-1, 1}^d, by enumeration."""
    d = h.shape[1]
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=h.dtype)  # MSB first
    p = (-((h[:, None, :] - codes[None]) ** 2).sum(-1) / tau).softmax(-1)  # (N, K)
    avg = p.mean(0)
    return -torch.special.xlogy(p, p).sum(-1).mean(), -torch.special.xlogy(avg, avg).sum()


def test_lfq_entropy_terms_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    tau, d = 0.7, 6
    h = torch.randn(41, d, dtype=torch.float64)
    sample_ref, batch_ref = _brute_entropies(h, tau)
    logits = 4 * h / tau
    assert float(bernoulli_entropy(logits).sum(1).mean()) == pytest.approx(float(sample_ref), rel=1e-12)
    assert float(batch_entropy(logits)) == pytest.approx(float(batch_ref), rel=1e-9)
    # groups: the sum of each group's exact batch entropy over its own sub-codes
    grouped = sum(_brute_entropies(h[:, s], tau)[1] for s in (slice(0, 2), slice(2, 4), slice(4, 6)))
    assert float(batch_entropy(logits, groups=3)) == pytest.approx(float(grouped), rel=1e-9)
    # gradients too, and chunking (tiny blocks) changes nothing
    ha = h.clone().requires_grad_(True)
    _brute_entropies(ha, tau)[1].backward()
    monkeypatch.setattr(lfq_mod, "_BLOCK_ELEMENTS", 50)  # blocks of 1 code
    hb = h.clone().requires_grad_(True)
    chunked = batch_entropy(4 * hb / tau)
    chunked.backward()
    assert float(chunked.detach()) == pytest.approx(float(batch_ref), rel=1e-9)
    torch.testing.assert_close(hb.grad, ha.grad, rtol=1e-7, atol=1e-10)


def test_lfq_loss_is_commitment_plus_weighted_entropies() -> None:
    torch.manual_seed(1)
    q = LookupFreeQuantizer(16, 4, beta=0.3, sample_entropy_weight=0.2, batch_entropy_weight=0.5, temperature=2.0)
    z = torch.randn(2, 4, 3, 3)
    out = q.train()(z)
    h = z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    sample, batch = _brute_entropies(h, 2.0)
    commit = torch.mean((h - torch.where(h > 0, 1.0, -1.0).double()) ** 2)
    assert float(out.loss) == pytest.approx(float(0.3 * commit + 0.2 * sample - 0.5 * batch), rel=1e-5)
    assert float(out.stats["batch_entropy"]) == pytest.approx(float(batch), rel=1e-5)
    # eval: commitment only (no entropy, no collective), same indices
    ev = q.eval()(z)
    assert float(ev.loss) == pytest.approx(float(0.3 * commit), rel=1e-5) and "batch_entropy" not in ev.stats
    assert torch.equal(ev.indices, out.indices)


def test_lfq_indices_are_sign_bits_msb_first() -> None:
    q = LookupFreeQuantizer(8, 3)
    z = torch.tensor([[1.0, -1.0, -1.0], [-2.0, 0.5, 3.0], [-1.0, -1.0, -0.1]]).t().reshape(1, 3, 1, 3)
    assert q(z).indices.reshape(-1).tolist() == [4, 3, 0]
    assert torch.equal(q.indices_to_codes(torch.arange(8)), torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3))))


def test_lfq_with_2_to_the_18_codes_trains_a_step_in_bounded_memory() -> None:
    torch.manual_seed(0)
    q = LookupFreeQuantizer(2**18, 18).train()
    z = torch.randn(1, 18, 4, 4, requires_grad=True)
    out = q(z)
    out.loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert 0 < float(out.stats["batch_entropy"]) <= 18 * math.log(2)


# ---------------------------------------------------------------- SimVQ


def test_simvq_codebook_is_frozen_and_the_linear_layer_learns() -> None:
    torch.manual_seed(0)
    q = SimVQuantizer(64, C).train()
    frozen = q.codebook.detach().clone()
    assert not q.codebook.requires_grad
    assert abs(float(frozen.std()) - C**-0.5) < 0.05  # N(0, 1/d), the paper's initialisation
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], lr=1e-2)
    w0 = q.proj.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        out = q(torch.randn(2, C, 4, 4))
        out.loss.backward()
        assert q.codebook.grad is None
        assert q.proj.weight.grad is not None and q.proj.weight.grad.abs().sum() > 0
        opt.step()
    assert torch.equal(q.codebook, frozen)
    assert not torch.equal(q.proj.weight, w0)
    assert set(q.state_dict()) == {"codebook", "proj.weight", "proj.bias"}
    assert float(SimVQuantizer(8, 4, codebook_std=3.0).codebook.std()) > 1.5


# ---------------------------------------------------------------- model.quantizer.type


def _cfg(**quantizer):
    return parse_config(tiny_dict(model={"variant": quantizer.pop("variant", "VQModel"), "quantizer": quantizer}))


@pytest.mark.parametrize("qtype,cls", [("fsq", FSQuantizer), ("simvq", SimVQuantizer), ("lfq", LookupFreeQuantizer)])
def test_type_builds_its_quantizer_in_the_taming_family(qtype: str, cls: type) -> None:
    model = build(_cfg(type=qtype).model)
    assert type(model.quantize) is cls and model.num_codes == model.quantize.num_codes


def test_type_fields_reach_the_quantizers() -> None:
    cfg = QuantizerConfig(type="fsq", fsq_levels=[5, 3])
    fsq = build_quantizer("VQModel", cfg, 32, 8, 8)
    assert fsq.levels == [5, 3] and fsq.num_codes == 15 and fsq.project_in.in_features == 8
    cfg = QuantizerConfig(type="lfq", beta=0.4, lfq_sample_entropy_weight=0.3, lfq_batch_entropy_weight=0.7,
                          lfq_temperature=0.2, lfq_entropy_groups=2)
    lfq = build_quantizer("VQModel", cfg, 64, 8, 8)
    assert (lfq.bits, lfq.beta, lfq.sample_entropy_weight, lfq.batch_entropy_weight, lfq.temperature,
            lfq.entropy_groups) == (6, 0.4, 0.3, 0.7, 0.2, 2)
    simvq = build_quantizer("VQModel", QuantizerConfig(type="simvq", beta=0.6, simvq_codebook_std=0.5), 32, 8, 8)
    assert (simvq.num_codes, simvq.beta, simvq.codebook_std) == (32, 0.6, 0.5)
    ema = build_quantizer("VQModel", QuantizerConfig(type="ema", decay=0.8), 32, 8, 8)
    assert type(ema).__name__ == "EMAVectorQuantizer" and ema.embedding.decay == 0.8
    rvq = build_quantizer("EMAVQ", QuantizerConfig(type="residual", rvq_levels=3), 32, 8, 8)
    assert type(rvq).__name__ == "ResidualVectorQuantizer" and rvq.kind == "ema" and rvq.depth == 3
    gumbel = build(_cfg(type="gumbel").model)
    assert type(gumbel.quantize).__name__ == "GumbelQuantizer"
    assert gumbel.quant_conv.out_channels == gumbel.config.ddconfig.z_channels  # GumbelVQ's layout


@pytest.mark.parametrize("quantizer,path,fix", [
    ({"variant": "GumbelVQ", "type": "fsq"}, "model.quantizer.type", "set model.variant: VQModel"),
    ({"variant": "EMAVQ", "type": "vq"}, "model.quantizer.type", "set it to 'ema'"),
    ({"type": "product", "rvq_levels": 2}, "model.quantizer.rvq_levels", "rvq_levels: 1"),
    ({"variant": "PQEMAVQ", "type": "fsq"}, "model.quantizer.type", "set model.variant: VQModel"),
    ({"type": "residual"}, "model.quantizer.rvq_levels", "set model.quantizer.rvq_levels"),
    ({"type": "fsq", "rvq_levels": 2}, "model.quantizer.rvq_levels", "rvq_levels: 1"),
    ({"type": "lfq", "lfq_entropy_groups": 6}, "model.quantizer.lfq_entropy_groups", "up to 5"),
    ({"type": "simvq", "fsq_levels": [8, 1]}, "model.quantizer.fsq_levels", "[8, 5, 5, 5]"),
    ({"type": "lfq", "lfq_temperature": 0}, "model.quantizer.lfq_temperature", "0.01"),
    ({"type": "quantum"}, "model.quantizer.type", "lfq"),
])
def test_contradictions_and_bad_values_are_config_errors_naming_the_fix(quantizer, path, fix) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg(**quantizer)
    assert e.value.path == path and fix in str(e.value)


def test_lfq_needs_a_power_of_two_codebook() -> None:
    with pytest.raises(ConfigError, match="power of two") as e:
        parse_config(tiny_dict(model={"variant": "VQModel", "n_embed": 1000, "quantizer": {"type": "lfq"}}))
    assert e.value.path == "model.n_embed"


def test_fields_of_another_type_warn_that_they_do_nothing() -> None:
    _, lines = parse_config_with_warnings(tiny_dict(model={
        "variant": "VQModel", "quantizer": {"type": "fsq", "fsq_levels": [4, 4], "lfq_temperature": 0.5,
                                            "kmeans_init": True, "beta": 0.3}}))
    text = "\n".join(lines)
    assert "model.quantizer.lfq_temperature: has no effect" in text
    assert "model.quantizer.kmeans_init: has no effect" in text
    assert "model.quantizer.beta: has no effect" in text and "model.n_embed: has no effect" in text
    assert not any(line.startswith("model.quantizer.fsq_levels") for line in lines)
    _, lines = parse_config_with_warnings(tiny_dict(model={"variant": "VQModel", "quantizer": {"fsq_levels": [4, 4]}}))
    assert any(line.startswith("model.quantizer.fsq_levels: has no effect") for line in lines)


# ---------------------------------------------------------------- VQ-VAE-2 levels


def _vqvae2(qtype: str, **quantizer) -> dict:
    d = tiny_dict(model={"family": "vqvae2", "quantizer": {"type": qtype, **quantizer},
                         "vqvae2": {"hidden_channels": 16, "res_channels": 8, "nb_res_layers": 1, "embed_dim": 8,
                                    "nb_entries": 64}})
    for key in ("variant", "n_embed", "embed_dim", "ddconfig"):
        del d["model"][key]
    return d


@pytest.mark.parametrize("qtype,cls", [("fsq", FSQuantizer), ("simvq", SimVQuantizer), ("lfq", LookupFreeQuantizer)])
def test_vqvae2_levels_take_the_typed_quantizers(qtype: str, cls: type) -> None:
    torch.manual_seed(0)
    model = build(parse_config(_vqvae2(qtype, fsq_levels=[4, 4, 4])).model)
    assert all(type(cb.quantizer) is cls for cb in model.codebooks) and model.nb_entries == 64
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model.train()(x)
    (out.reconstruction.abs().mean() + out.codebook_loss).backward()
    assert model.encoders[0].layers[0][0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).reconstruction, model.decode(model.encode(x)))


def test_vqvae2_refuses_residual_types() -> None:
    with pytest.raises(ConfigError, match="VQ-VAE-2") as e:
        parse_config(_vqvae2("residual"))
    assert e.value.path == "model.quantizer.type"


# ---------------------------------------------------------------- two processes (gloo): LFQ batch entropy


def _lfq_worker(rank: int, world: int, init_file: str, out_dir: str, logits: torch.Tensor) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = logits[rank * 7:(rank + 1) * 7].clone().requires_grad_(True)  # ranks hold different tokens
        h = batch_entropy(mine)
        h.backward()
        torch.save({"h": h.detach(), "grad": mine.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_lfq_batch_entropy_is_the_global_batchs_across_two_gloo_ranks() -> None:
    import torch.multiprocessing as mp

    torch.manual_seed(3)
    logits = torch.randn(14, 5, dtype=torch.float64) * 2
    with tempfile.TemporaryDirectory() as tmp:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(_lfq_worker, args=(2, os.path.join(tmp, "init"), tmp, logits), nprocs=2, join=True,
                           start_method=method)
        r = [torch.load(os.path.join(tmp, f"rank{i}.pt")) for i in range(2)]
    whole = logits.clone().requires_grad_(True)
    ref = batch_entropy(whole)
    ref.backward()
    for i in range(2):
        assert float(r[i]["h"]) == pytest.approx(float(ref.detach()), rel=1e-12)
        # DDP averages the two ranks' gradients: each carries world_size × its part of the global gradient
        torch.testing.assert_close(r[i]["grad"] / 2, whole.grad[i * 7:(i + 1) * 7], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- training, resume and export, end to end

TYPED = {
    "fsq": {"type": "fsq", "fsq_levels": [4, 4, 2]},
    "simvq": {"type": "simvq"},
    "lfq": {"type": "lfq", "lfq_entropy_groups": 1},
}


@pytest.mark.parametrize("name", list(TYPED))
def test_train_resume_export_and_from_pretrained_per_type(name: str, tmp_path) -> None:
    from vqforge.cli import main
    from vqforge.train.build import build_run

    raw = tiny_dict(model={"variant": "VQModel", "quantizer": TYPED[name]},
                    loss={"use_gan": False}, train={"num_steps": 4, "save_interval": 2, "validation_interval": 2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg_path), "--out", str(tmp_path / "straight")]) == 0

    # exact resume: 2 steps, then resume to 4, equals 4 straight steps bit for bit
    half = build_run(parse_config(raw, [f"train.num_steps=2"]), tmp_path / "split")
    half.trainer.fit()
    half.logger.close()
    resumed = build_run(parse_config(raw), tmp_path / "split", resume=str(tmp_path / "split"))
    assert resumed.trainer.counters.step == 2
    resumed.trainer.fit()
    resumed.logger.close()
    straight = vqforge.from_pretrained(tmp_path / "straight" / "model")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.trainer.raw_model.state_dict()[k]), k

    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "straight"), "--out", str(out)]) == 0
    model = vqforge.from_pretrained(out).eval()
    assert type(model.quantize).__name__ == type(resumed.trainer.raw_model.quantize).__name__
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        recon = model(x).reconstruction
        assert torch.equal(model.decode(model.encode(x)), recon)


def test_type_product_builds_the_product_quantizer_for_the_base_model() -> None:
    from vqforge.config.schema import QuantizerConfig
    from vqforge.quantizers import ProductEMAQuantizer, build_quantizer

    q = build_quantizer("VQModel", QuantizerConfig(type="product", num_subspaces=2), 16, 8, 8)
    assert isinstance(q, ProductEMAQuantizer)


@pytest.mark.parametrize("kind", list(KINDS))
def test_out_of_range_indices_are_an_error_before_lookup(kind: str) -> None:
    q = KINDS[kind]().eval()
    idx = torch.zeros(1, 2, 2, dtype=torch.long)
    assert q.codes_from_indices(idx).shape[0] == 1
    for bad in (-1, q.num_codes):
        idx[0, 1, 1] = bad
        with pytest.raises(ValueError, match="out of range"):
            q.codes_from_indices(idx)
