"""Quantizers: invariants over every kind, taming equivalence, EMA math, Gumbel schedule, RVQ prefixes, maintenance."""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable

import pytest
import torch

from vqforge import distributed
from vqforge.config import parse_config
from vqforge.config.effects import ineffective
from vqforge.config.schema import QuantizerConfig
from vqforge.errors import ConfigError
from vqforge.quantizers import (
    EMAVectorQuantizer,
    GumbelQuantizer,
    MaintenanceConfig,
    Quantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
    build_quantizer,
)
from vqforge.quantizers.gumbel import temperature_at
from vqforge.quantizers.assign import squared_distances

from conftest import GOLDEN

K, C = 32, 8  # codebook size and code dimension of the generic quantizers
MAINT = MaintenanceConfig(kmeans_init=True, kmeans_iters=3, restart_unused_steps=2)

KINDS: dict[str, Callable[[], Quantizer]] = {
    "vq": lambda: VectorQuantizer(K, C, beta=0.25, legacy=True),
    "vq_nonlegacy": lambda: VectorQuantizer(K, C, beta=0.25, legacy=False),
    "vq_maintained": lambda: VectorQuantizer(K, C, maintenance=MAINT),
    "ema": lambda: EMAVectorQuantizer(K, C, beta=0.25, decay=0.9),
    "ema_maintained": lambda: EMAVectorQuantizer(K, C, decay=0.9, maintenance=MAINT),
    "gumbel": lambda: GumbelQuantizer(6, K, C, kl_weight=1e-2),
    "gumbel_soft": lambda: GumbelQuantizer(6, K, C, straight_through=False),
    "rvq_vq": lambda: ResidualVectorQuantizer(3, K, C, kind="vq"),
    "rvq_vq_shared": lambda: ResidualVectorQuantizer(3, K, C, kind="vq", shared_codebook=True),
    "rvq_ema": lambda: ResidualVectorQuantizer(3, K, C, kind="ema"),
    "rvq_ema_shared_maintained": lambda: ResidualVectorQuantizer(3, K, C, kind="ema", shared_codebook=True,
                                                                 maintenance=MAINT),
}


def in_channels(q: Quantizer) -> int:
    return q.in_channels if isinstance(q, GumbelQuantizer) else C


def make(kind: str, seed: int = 0) -> tuple[Quantizer, torch.Tensor]:
    torch.manual_seed(seed)
    q = KINDS[kind]()
    z = torch.randn(2, in_channels(q), 5, 6)
    return q, z


def expected_index_shape(q: Quantizer, z: torch.Tensor) -> tuple[int, ...]:
    b, _, h, w = z.shape
    return (b, q.depth, h, w) if isinstance(q, ResidualVectorQuantizer) else (b, h, w)


# ---------------------------------------------------------------- invariants over every kind


@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_finite_and_stats(kind: str) -> None:
    q, z = make(kind)
    q.train()
    for _ in range(3):  # several steps: EMA updates, k-means init and restarts all happen here
        out = q(z)
    assert out.quantized.shape == (2, C, 5, 6)
    assert out.quantized.dtype == z.dtype
    assert out.indices.shape == expected_index_shape(q, z)
    assert out.indices.dtype == torch.int64
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < K
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert torch.isfinite(out.quantized).all()
    for name in ("usage", "perplexity"):
        v = out.stats[name]
        assert v.dim() == 0 and not v.requires_grad and torch.isfinite(v)
    codes_total = K * q.depth if isinstance(q, ResidualVectorQuantizer) and not q.shared_codebook else K
    assert 0 < float(out.stats["usage"]) <= 1
    assert 1 - 1e-4 <= float(out.stats["perplexity"]) <= codes_total + 1e-3


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("rvq")])
@pytest.mark.parametrize("training", [True, False])
def test_usage_and_perplexity_are_exactly_those_of_the_returned_indices(kind: str, training: bool) -> None:
    q, z = make(kind)
    z = torch.cat([z, z[:, :, :1].expand(-1, -1, 3, -1)], dim=2)  # repeated rows: an uneven histogram
    q.train(training)
    for _ in range(3):  # after EMA updates, k-means and restarts
        out = q(z)
    idx = out.indices.flatten()
    assert float(out.stats["usage"]) == idx.unique().numel() / K
    p = torch.bincount(idx, minlength=K).double() / idx.numel()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    torch.testing.assert_close(out.stats["perplexity"].double(), entropy.exp(), rtol=1e-6, atol=0)
    assert float(out.stats["perplexity"]) < idx.unique().numel()  # uneven: strictly below the number of used codes


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_trainable_parameter_and_input_gets_a_gradient(kind: str) -> None:
    q, z = make(kind)
    q.train()
    z.requires_grad_(True)
    out = q(z)
    (out.quantized * torch.randn_like(out.quantized)).sum().add(out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    trainable = [(n, p) for n, p in q.named_parameters() if p.requires_grad]
    for name, p in trainable:
        assert p.grad is not None, f"{kind}: {name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{kind}: {name} has a zero gradient"
    if "ema" in kind:
        assert trainable == [], "EMA codebooks must never be handed to an optimizer"


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_quantized_equals_codes_from_indices_exactly(kind: str) -> None:
    q, z = make(kind)
    q.train()
    q(z)  # leave the initial state (EMA update, k-means) so the check is not on a fresh module only
    q.eval()
    with torch.no_grad():
        out = q(z)
        again = q(z)
    assert torch.equal(out.quantized, q.codes_from_indices(out.indices))
    assert torch.equal(out.indices, again.indices), "eval must be deterministic"


@pytest.mark.parametrize("kind", list(KINDS))
def test_argmin_is_float32_under_bf16_autocast(kind: str) -> None:
    q, z = make(kind)
    q.eval()
    z = (3 * z).bfloat16()
    with torch.no_grad():
        reference = q(z.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = q(z)
    assert torch.equal(auto.indices, reference.indices)
    assert auto.quantized.dtype == torch.bfloat16
    torch.testing.assert_close(auto.quantized.float(), reference.quantized.to(torch.bfloat16).float())


def test_bf16_distances_would_pick_other_codes() -> None:
    """The autocast test above is meaningful: away from the origin, distances in bf16 change the argmin."""
    torch.manual_seed(0)
    q = VectorQuantizer(256, C).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(256, C) + 10.0)
    z = q.embedding.weight.detach()[torch.randint(0, 256, (400,))] + 0.3 * torch.randn(400, C)
    z4 = z.t().reshape(1, C, 20, 20)
    with torch.no_grad():
        ref = q(z4).indices.reshape(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            naive = squared_distances(z4.permute(0, 2, 3, 1).reshape(-1, C), q.embedding.weight).argmin(1)
            auto = q(z4).indices.reshape(-1)
    assert (naive != ref).any()
    assert torch.equal(auto, ref)


# ---------------------------------------------------------------- VectorQuantizer


def test_vq_matches_taming_golden_fixtures() -> None:
    from safetensors.torch import load_file

    expected = load_file(str(GOLDEN / "expected.safetensors"))
    weights = load_file(str(GOLDEN / "vqmodel.safetensors"))
    codebook = weights["quantize.embedding.weight"]
    q = VectorQuantizer(codebook.shape[0], codebook.shape[1], beta=0.25, legacy=True)
    q.load_state_dict({"embedding.weight": codebook}, strict=True)
    q.eval()
    with torch.no_grad():
        out = q(expected["h"])
    assert torch.equal(out.indices, expected["indices"])
    torch.testing.assert_close(out.quantized, expected["quant"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss.reshape(1), expected["qloss"], atol=0, rtol=1e-5)
    torch.testing.assert_close(q.codes_from_indices(expected["indices"]), expected["quant"], atol=1e-5, rtol=0)


def test_vq_init_and_state_dict_keys_are_tamings() -> None:
    q = VectorQuantizer(64, 8)
    assert list(q.state_dict()) == ["embedding.weight"]
    w = q.embedding.weight.detach()
    assert w.shape == (64, 8) and float(w.abs().max()) <= 1 / 64 and float(w.std()) > 0


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_beta_placement(legacy: bool) -> None:
    """Both loss terms have the same value; legacy puts beta on the codebook term, otherwise on the commitment."""
    beta = 0.25
    torch.manual_seed(0)
    q = VectorQuantizer(K, C, beta=beta, legacy=legacy)
    z = torch.randn(1, C, 3, 3, requires_grad=True)
    out = q(z)
    codes = q.codes_from_indices(out.indices).detach()
    mse = float(((codes - z.detach()) ** 2).mean())
    assert math.isclose(float(out.loss.detach()), (1 + beta) * mse, rel_tol=1e-5)
    out.loss.backward()
    commit_grad = 2 * (z.detach() - codes) / z.numel()  # d mse(sg[zq], z) / dz
    torch.testing.assert_close(z.grad, commit_grad * (1.0 if legacy else beta))
    used = out.indices.reshape(-1).unique()
    codebook_grad = q.embedding.weight.grad[used]
    commit_like = torch.zeros(K, C).index_add_(0, out.indices.reshape(-1),
                                               -commit_grad.permute(0, 2, 3, 1).reshape(-1, C))[used]
    torch.testing.assert_close(codebook_grad, commit_like * (beta if legacy else 1.0))


# ---------------------------------------------------------------- EMAVectorQuantizer


def hand_made_ema() -> tuple[EMAVectorQuantizer, torch.Tensor]:
    q = EMAVectorQuantizer(3, 2, beta=0.5, decay=0.9, eps=1e-5)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
        q.embedding.cluster_size.copy_(torch.tensor([1.0, 2.0, 0.5]))
        q.embedding.embed_avg.copy_(torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 5.0]]))
    # three vectors (1, 1), (-1, 1), (9, 1) as a (1, 2, 3, 1) map -> codes 0, 0, 1
    z = torch.tensor([[1.0, -1.0, 9.0], [1.0, 1.0, 1.0]]).reshape(1, 2, 3, 1)
    return q, z


def test_ema_update_math_on_a_hand_made_batch() -> None:
    q, z = hand_made_ema()
    q.train()
    out = q(z)
    assert out.indices.reshape(-1).tolist() == [0, 0, 1]
    # returned codes are the pre-update ones; loss = beta * mse(codes, z)
    assert out.quantized.reshape(2, 3).t().tolist() == [[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]]
    assert math.isclose(float(out.loss), 0.5 * (1 + 1 + 1 + 1 + 1 + 1) / 6, rel_tol=1e-6)
    # by hand: counts (2, 1, 0), sums ((0, 2), (9, 1), (0, 0))
    cluster_size = [0.9 * 1.0 + 0.1 * 2, 0.9 * 2.0 + 0.1 * 1, 0.9 * 0.5]  # 1.1, 1.9, 0.45
    embed_avg = [[0.0, 0.1 * 2], [0.9 * 20 + 0.1 * 9, 0.1 * 1], [0.0, 0.9 * 5]]
    n = sum(cluster_size)
    eps = 1e-5
    smoothed = [n * (s + eps) / (n + 3 * eps) for s in cluster_size]
    weight = [[a / s for a in row] for row, s in zip(embed_avg, smoothed)]
    e = q.embedding
    torch.testing.assert_close(e.cluster_size, torch.tensor(cluster_size))
    torch.testing.assert_close(e.embed_avg, torch.tensor(embed_avg))
    torch.testing.assert_close(e.weight, torch.tensor(weight))


def test_ema_sums_statistics_over_ranks_before_the_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend two ranks saw the same batch: the all-reduced statistics double, so cluster_size grows twice as much."""
    calls = []

    def fake_all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return t.mul_(2)

    monkeypatch.setattr(distributed, "all_reduce_sum", fake_all_reduce_sum)
    q, z = hand_made_ema()
    q.train()
    q(z)
    assert calls, "EMA statistics were not all-reduced"
    torch.testing.assert_close(q.embedding.cluster_size, torch.tensor([0.9 + 0.1 * 4, 1.8 + 0.1 * 2, 0.45]))
    torch.testing.assert_close(q.embedding.embed_avg[1], torch.tensor([18.0 + 0.1 * 18, 0.1 * 2]))


def test_ema_eval_does_not_update_and_keys_match_taming() -> None:
    q, z = hand_made_ema()
    assert list(q.state_dict()) == ["embedding.weight", "embedding.cluster_size", "embedding.embed_avg"]
    assert all(not t.requires_grad for t in q.state_dict(keep_vars=True).values())
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    q(z)
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k
    fresh = EMAVectorQuantizer(16, 4)  # taming's init
    assert torch.equal(fresh.embedding.embed_avg, fresh.embedding.weight)
    assert torch.equal(fresh.embedding.cluster_size, torch.zeros(16))


def clustered_data(n_per: int, dim: int, centres: torch.Tensor, noise: float) -> torch.Tensor:
    return centres.repeat_interleave(n_per, 0) + noise * torch.randn(n_per * centres.shape[0], dim)


def as_map(x: torch.Tensor) -> torch.Tensor:
    """(N, C) rows -> (1, C, N, 1) map."""
    return x.t().reshape(1, x.shape[1], x.shape[0], 1).contiguous()


def train_ema_on_clusters(q: EMAVectorQuantizer, centres: torch.Tensor, steps: int) -> list[float]:
    q.train()
    errors = []
    for _ in range(steps):
        x = as_map(clustered_data(16, 2, centres, 0.1))
        errors.append(float(((q(x).quantized - x) ** 2).mean()))
    return errors


CENTRES = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, -3.0]])


def test_ema_update_moves_codes_to_the_cluster_means() -> None:
    """Plain EMA (no maintenance), codes starting near but off their clusters: they converge onto the centres."""
    torch.manual_seed(0)
    q = EMAVectorQuantizer(4, 2, decay=0.8)
    with torch.no_grad():
        q.embedding.weight.copy_(CENTRES * 0.3)
        q.embedding.embed_avg.copy_(CENTRES * 0.3)
    errors = train_ema_on_clusters(q, CENTRES, 60)
    assert float(torch.cdist(CENTRES, q.embedding.weight).min(dim=1).values.max()) < 0.1, q.embedding.weight
    assert errors[-1] < 0.05 * errors[0]


def test_ema_from_taming_init_with_restarts_finds_every_cluster() -> None:
    """taming's init (randn codes, embed_avg = codes, cluster_size 0) inflates codes at the first update and leaves
    most of them dead; with dead-code restarts the codebook still covers every cluster of the data."""
    torch.manual_seed(0)
    q = EMAVectorQuantizer(8, 2, decay=0.99, maintenance=MaintenanceConfig(restart_unused_steps=20))
    errors = train_ema_on_clusters(q, CENTRES, 300)
    assert float(torch.cdist(CENTRES, q.embedding.weight).min(dim=1).values.max()) < 0.2, q.embedding.weight
    assert max(errors[-10:]) < 0.02


# ---------------------------------------------------------------- GumbelQuantizer


def test_gumbel_temperature_schedules() -> None:
    s, e, n = 1.0, 0.0625, 100
    assert temperature_at(0, s, e, n, "cosine") == s
    assert math.isclose(temperature_at(50, s, e, n, "cosine"), (s + e) / 2)
    assert math.isclose(temperature_at(25, s, e, n, "cosine"), e + (s - e) * (1 + math.cos(math.pi / 4)) / 2)
    assert math.isclose(temperature_at(100, s, e, n, "cosine"), e)
    assert math.isclose(temperature_at(500, s, e, n, "cosine"), e)
    assert math.isclose(temperature_at(25, s, e, n, "linear"), s + (e - s) * 0.25)
    assert math.isclose(temperature_at(50, s, e, n, "exponential"), math.sqrt(s * e))
    assert math.isclose(temperature_at(100, s, e, n, "exponential"), e)
    assert temperature_at(10_000, s, e, 0, "cosine") == s  # 0 anneal steps: constant start
    q = GumbelQuantizer(4, 8, 3, temperature_start=s, temperature_end=e, temperature_anneal_steps=n,
                        temperature_schedule="linear")
    z = torch.randn(1, 4, 2, 2)
    logged = q(z).stats["temperature"]
    assert float(logged) == s
    q.set_step(50)
    assert math.isclose(float(q(z).stats["temperature"]), (s + e) / 2, rel_tol=1e-6)
    assert float(logged) == s  # a value taken earlier (kept on device until the log interval) stays what it was
    assert "_temperature_stat" not in q.state_dict()  # taming's keys only


def test_gumbel_eval_is_argmax_and_keys_match_taming() -> None:
    torch.manual_seed(0)
    q = GumbelQuantizer(6, K, C).eval()
    assert list(q.state_dict()) == ["proj.weight", "proj.bias", "embed.weight"]
    assert q.proj.weight.shape == (K, 6, 1, 1) and q.embed.weight.shape == (K, C)
    z = torch.randn(2, 6, 4, 4)
    out = q(z)
    assert torch.equal(out.indices, q.proj(z).argmax(dim=1))
    assert torch.equal(out.quantized, q.embed.weight[out.indices].permute(0, 3, 1, 2))


def test_gumbel_kl_loss_values() -> None:
    q = GumbelQuantizer(2, 8, 3, kl_weight=0.5)
    with torch.no_grad():
        q.proj.weight.zero_()
        q.proj.bias.zero_()
    z = torch.randn(1, 2, 3, 3)
    assert abs(float(q(z).loss.detach())) < 1e-6  # uniform q: KL to uniform is 0
    with torch.no_grad():
        q.proj.bias.copy_(torch.tensor([60.0] + [0.0] * 7))
    assert math.isclose(float(q(z).loss.detach()), 0.5 * math.log(8), rel_tol=1e-4)  # one-hot q: log K


def test_gumbel_training_hard_vs_soft() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 6, 3, 3)
    hard = GumbelQuantizer(6, K, C, straight_through=True).train()
    out = hard(z)
    torch.testing.assert_close(out.quantized, hard.codes_from_indices(out.indices))
    soft = GumbelQuantizer(6, K, C, straight_through=False).train()
    out = soft(z)
    assert not torch.allclose(out.quantized, soft.codes_from_indices(out.indices), atol=1e-3)


# ---------------------------------------------------------------- ResidualVectorQuantizer


@pytest.mark.parametrize("kind,shared,maintenance", [
    ("ema", False, MaintenanceConfig(kmeans_init=True, kmeans_iters=5)),
    ("vq", True, MaintenanceConfig(kmeans_init=True, kmeans_iters=5)),
    ("ema", True, MaintenanceConfig(restart_unused_steps=10)),  # the user's setup: shared EMA codebook
])
def test_rvq_prefix_error_decreases_with_depth(kind: str, shared: bool, maintenance: MaintenanceConfig) -> None:
    torch.manual_seed(0)
    depth = 4
    q = ResidualVectorQuantizer(depth, 16, 8, kind=kind, shared_codebook=shared, decay=0.9, maintenance=maintenance)
    data = torch.randn(512, 8)
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], lr=1e-2) if kind == "vq" else None
    q.train()
    for _ in range(60 if kind == "vq" else 150):
        x = as_map(data[torch.randint(0, 512, (128,))])
        out = q(x)
        if opt is not None:
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    q.eval()
    x = as_map(data)
    with torch.no_grad():
        out = q(x)
        prefix = [float(((q.codes_from_indices(out.indices[:, :d]) - x) ** 2).mean()) for d in range(1, depth + 1)]
    errors = [float((x**2).mean())] + prefix  # depth 0 decodes to zeros
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert torch.equal(q.codes_from_indices(out.indices), out.quantized)


def test_rvq_indices_stats_and_prefix_checks() -> None:
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(3, K, C).eval()
    z = torch.randn(2, C, 4, 4)
    out = q(z)
    assert out.indices.shape == (2, 3, 4, 4)
    assert {f"l{i}/{s}" for i in range(3) for s in ("usage", "perplexity")} <= set(out.stats)
    one = q.codes_from_indices(out.indices[:, :1])
    assert torch.equal(one, q.levels[0].codes_from_indices(out.indices[:, 0]))
    two = q.codes_from_indices(out.indices[:, :2])
    assert torch.equal(two, one + q.levels[1].codes_from_indices(out.indices[:, 1]))
    with pytest.raises(ValueError, match="D' <= 3"):
        q.codes_from_indices(torch.zeros(2, 4, 4, 4, dtype=torch.long))
    assert list(ResidualVectorQuantizer(2, K, C, shared_codebook=True).state_dict()) == ["shared.embedding.weight"]


def test_rvq_shared_ema_updates_once_per_step_from_all_levels() -> None:
    torch.manual_seed(0)
    depth, decay = 8, 0.9
    q = ResidualVectorQuantizer(depth, K, C, kind="ema", shared_codebook=True, decay=decay).train()
    z = torch.randn(2, C, 4, 4)
    w0 = q.shared.embedding.weight.clone()
    out = q(z)
    n = z.numel() // C
    cs = q.shared.embedding.cluster_size
    # one update from zero: cluster_size = (1 - decay) * counts of all levels (D updates would leave decay^i factors)
    expected = (1 - decay) * torch.bincount(out.indices.reshape(-1), minlength=K).float()
    torch.testing.assert_close(cs, expected)
    assert math.isclose(float(cs.sum()), (1 - decay) * n * depth, rel_tol=1e-5)
    # every level assigned with the start-of-step codebook
    residual = z.permute(0, 2, 3, 1).reshape(-1, C)
    for i in range(depth):
        idx = torch.cdist(residual, w0).argmin(dim=1)
        assert torch.equal(idx, out.indices[:, i].reshape(-1)), f"level {i}"
        residual = residual - w0[idx]


# ---------------------------------------------------------------- codebook maintenance


def test_maintenance_state_only_when_enabled_and_taming_keys_load_strictly() -> None:
    assert list(VectorQuantizer(8, 2).state_dict()) == ["embedding.weight"]
    assert list(VectorQuantizer(8, 2, maintenance=MaintenanceConfig()).state_dict()) == ["embedding.weight"]
    VectorQuantizer(8, 2, maintenance=MaintenanceConfig()).load_state_dict({"embedding.weight": torch.zeros(8, 2)})
    keys = list(EMAVectorQuantizer(8, 2, maintenance=MaintenanceConfig(restart_unused_steps=5)).state_dict())
    assert keys == ["embedding.weight", "embedding.cluster_size", "embedding.embed_avg", "maintenance.steps_unused"]
    keys = list(VectorQuantizer(8, 2, maintenance=MaintenanceConfig(kmeans_init=True)).state_dict())
    assert keys == ["embedding.weight", "maintenance.kmeans_done"]


@pytest.mark.parametrize("cls", [VectorQuantizer, EMAVectorQuantizer])
def test_kmeans_init_puts_codes_on_cluster_centres(cls: type) -> None:
    torch.manual_seed(0)
    q = cls(4, 2, maintenance=MaintenanceConfig(kmeans_init=True, kmeans_iters=5, kmeans_batches=2))
    q.train()
    before = q.codebook.detach().clone()
    first, second = clustered_data(10, 2, CENTRES, 0.05), clustered_data(10, 2, CENTRES, 0.05)
    q(as_map(first))
    if cls is VectorQuantizer:  # still collecting after batch 1 of 2 (EMA has moved its codebook by its update)
        assert torch.equal(q.codebook, before)
    assert not bool(q.maintenance.kmeans_done)
    q(as_map(second))
    assert bool(q.maintenance.kmeans_done)
    both = torch.cat([first, second])
    means = torch.stack([both[(torch.cdist(both, CENTRES).argmin(1) == j)].mean(0) for j in range(4)])
    dist = torch.cdist(means, q.codebook.detach())
    assert float(dist.min(dim=1).values.max()) < 0.2
    if cls is EMAVectorQuantizer:
        # consistent EMA state: each code stands for its cluster's vectors per batch (10), embed_avg = code · size
        e = q.embedding
        torch.testing.assert_close(e.cluster_size, torch.full((4,), 10.0))
        torch.testing.assert_close(e.embed_avg / e.cluster_size[:, None], e.weight, atol=1e-3, rtol=0)
    else:  # k-means runs once: a later training batch far away leaves the codebook alone
        init = q.codebook.detach().clone()
        q(as_map(first + 100))
        assert torch.equal(q.codebook, init)


def run_kmeans_init(seed: int) -> torch.Tensor:
    torch.manual_seed(123)
    data = torch.randn(200, 3)
    torch.manual_seed(seed)
    q = VectorQuantizer(16, 3, maintenance=MaintenanceConfig(kmeans_init=True, kmeans_iters=2)).train()
    q(as_map(data))
    return q.codebook.detach().clone()


def test_kmeans_init_is_deterministic_under_the_seed() -> None:
    assert torch.equal(run_kmeans_init(1), run_kmeans_init(1))
    assert not torch.equal(run_kmeans_init(1), run_kmeans_init(2))


@pytest.mark.parametrize("cls", [VectorQuantizer, EMAVectorQuantizer])
def test_dead_codes_restart_after_n_steps_and_not_before(cls: type) -> None:
    torch.manual_seed(0)
    n_steps = 3
    q = cls(4, 2, maintenance=MaintenanceConfig(restart_unused_steps=n_steps)).train()
    far = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, 50.0]])
    with torch.no_grad():
        q.codebook.copy_(far)
        if cls is EMAVectorQuantizer:
            q.embedding.embed_avg.copy_(far)
            q.embedding.cluster_size.fill_(1.0)
    for step in range(1, n_steps + 1):
        x = 0.3 * torch.randn(12, 2) + torch.tensor([0.5, 0.0])
        q(as_map(x))
        dead_rows = q.codebook.detach()[2:]
        if step < n_steps:
            assert (dead_rows.abs() > 40).all(), f"restarted too early (step {step})"
    # after N unused steps codes 2 and 3 are rows of the last batch, distinct, and their counters are reset
    for row in q.codebook.detach()[2:]:
        assert ((x - row).abs().max(dim=1).values == 0).any(), row
    assert not torch.equal(q.codebook[2], q.codebook[3])
    assert q.maintenance.steps_unused.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("cls", [VectorQuantizer, EMAVectorQuantizer])
def test_restart_write_keeps_the_backward_exact_with_cosine_codes(cls: type) -> None:
    """Cosine codes save the codebook for their backward; a restart writes it in the same forward (every step, so
    the write must not break or change that backward: restarted codes were unused, so their gradient is 0)."""
    torch.manual_seed(0)
    a = cls(8, 4, maintenance=MaintenanceConfig(restart_unused_steps=1), cosine=True).train()
    b = cls(8, 4, cosine=True).train()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "maintenance" not in k})
    z = torch.randn(1, 4, 2, 2)  # 4 vectors, 8 codes: at least 4 codes are unused and restart in a's forward
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    before = a.codebook.detach().clone()
    oa, ob = a(za), b(zb)
    assert not torch.equal(a.codebook.detach(), before)  # the restart wrote during the forward
    (oa.loss + oa.quantized.square().sum()).backward()
    (ob.loss + ob.quantized.square().sum()).backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=0, atol=0)
    if cls is VectorQuantizer:
        torch.testing.assert_close(a.embedding.weight.grad, b.embedding.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("min_uses", [1, 2])
def test_restart_min_uses_also_restarts_rare_codes(min_uses: int) -> None:
    """A code that takes one vector per step counts as used with restart_min_uses 1 and stays; with 2 it is rare
    and is re-seeded. Codes that take many vectors stay either way."""
    torch.manual_seed(0)
    q = EMAVectorQuantizer(3, 2, maintenance=MaintenanceConfig(restart_unused_steps=2,
                                                                 restart_min_uses=min_uses)).train()
    book = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    with torch.no_grad():
        q.codebook.copy_(book)
        q.embedding.embed_avg.copy_(book)
        q.embedding.cluster_size.fill_(1.0)
    for _ in range(2):
        x = torch.cat([0.01 * torch.randn(8, 2), 10.0 + 0.01 * torch.randn(8, 2) * torch.tensor([1.0, 0.0]),
                       torch.tensor([[0.0, 10.0]])])  # code 2 takes exactly one vector per step
        x[8:16, 1] = 0.0
        q(as_map(x))
    rare = q.codebook.detach()[2]
    if min_uses == 1:
        assert torch.allclose(rare, torch.tensor([0.0, 10.0]), atol=1e-3)
    else:
        assert ((x - rare).abs().max(dim=1).values == 0).any() and not torch.allclose(rare, torch.tensor([0.0, 10.0]))
    assert q.codebook.detach()[0].abs().max() < 0.1 and (q.codebook.detach()[1] - book[1]).abs().max() < 0.1


def run_restart(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    q = VectorQuantizer(8, 2, maintenance=MaintenanceConfig(restart_unused_steps=1)).train()
    with torch.no_grad():
        q.codebook.add_(100.0)
        q.codebook[0].zero_()
    torch.manual_seed(7)
    data = torch.randn(64, 2)
    torch.manual_seed(seed)
    q(as_map(data))
    return q.codebook.detach().clone()


def test_restart_is_deterministic_under_the_seed() -> None:
    assert torch.equal(run_restart(3), run_restart(3))
    assert not torch.equal(run_restart(3), run_restart(4))


def test_restart_during_forward_keeps_backward_working() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, maintenance=MaintenanceConfig(kmeans_init=True, restart_unused_steps=1)).train()
    z = torch.randn(1, 2, 2, 2, requires_grad=True)  # 4 vectors, 8 codes: at least 4 codes restart in this forward
    before = q.codebook.detach().clone()
    q(z)
    out = q(z)
    assert not torch.equal(q.codebook, before)
    out.loss.backward()
    assert z.grad is not None and q.embedding.weight.grad is not None


@pytest.mark.parametrize("deterministic", [False, True])
def test_code_sums_equal_the_one_hot_product(deterministic: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqforge.quantizers.assign import code_sums

    calls = []
    real = torch.segment_reduce
    monkeypatch.setattr(torch, "segment_reduce", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(3)
    k, n, c = 50, 700, 6
    idx = torch.randint(0, k - 5, (n,), generator=g)  # the last 5 codes unused: their sums must be exactly 0
    z = torch.randn(n, c, generator=g)
    expected = (torch.nn.functional.one_hot(idx, k).double().t() @ z.double()).float()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        got = code_sums(idx, z, k)
    finally:
        torch.use_deterministic_algorithms(before)
    assert got.dtype == torch.float32 and got.shape == (k, c)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[k - 5:], torch.zeros(5, c))
    assert len(calls) == int(deterministic)  # the sort + segment-sum path only under deterministic algorithms


def test_chunked_assignment_matches_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqforge.quantizers import assign

    torch.manual_seed(0)
    z, codebook = torch.randn(1000, 4), torch.randn(64, 4)
    whole = assign.nearest_code(z, codebook)
    monkeypatch.setattr(assign, "_CHUNK_ELEMENTS", 64 * 7)  # 7 rows per chunk
    assert torch.equal(assign.nearest_code(z, codebook), whole)
    assert torch.equal(whole, torch.cdist(z, codebook).argmin(dim=1))
    idx = torch.randint(0, 64, (1000,))
    torch.testing.assert_close(assign.code_sums(idx, z, 64), torch.zeros(64, 4).index_add_(0, idx, z))


# ---------------------------------------------------------------- build_quantizer


def test_build_quantizer_consumes_every_field() -> None:
    cfg = QuantizerConfig(beta=0.4, legacy=False, decay=0.95, eps=1e-3, kmeans_init=True, kmeans_iters=4,
                          kmeans_batches=3, restart_unused_steps=7)
    vq = build_quantizer("VQModel", cfg, 32, 8, 16)
    assert type(vq) is VectorQuantizer and vq.num_codes == 32 and vq.embed_dim == 8
    assert (vq.beta, vq.legacy) == (0.4, False)
    assert vq.maintenance.cfg == MaintenanceConfig(True, 4, 3, 7)
    ema = build_quantizer("EMAVQ", cfg, 32, 8, 16)
    assert type(ema) is EMAVectorQuantizer and ema.beta == 0.4
    assert (ema.embedding.decay, ema.embedding.eps) == (0.95, 1e-3)
    assert ema.maintenance.cfg == MaintenanceConfig(True, 4, 3, 7)
    assert build_quantizer("VQModel", QuantizerConfig(), 32, 8, 16).maintenance is None

    rcfg = QuantizerConfig(rvq_levels=3, shared_codebook=True, decay=0.8, beta=0.1)
    rvq = build_quantizer("EMAVQ", rcfg, 32, 8, 16)
    assert type(rvq) is ResidualVectorQuantizer and rvq.depth == 3 and rvq.kind == "ema" and rvq.shared_codebook
    assert rvq.shared.embedding.decay == 0.8 and rvq.shared.beta == 0.1
    rvq = build_quantizer("VQModel", QuantizerConfig(rvq_levels=2, legacy=False), 32, 8, 16)
    assert rvq.kind == "vq" and not rvq.shared_codebook and len(rvq.levels) == 2 and not rvq.levels[1].legacy

    gcfg = QuantizerConfig(kl_weight=0.1, straight_through=False, temperature_start=2.0, temperature_end=0.5,
                           temperature_anneal_steps=10, temperature_schedule="exponential")
    g = build_quantizer("GumbelVQ", gcfg, 32, 8, 16)
    assert type(g) is GumbelQuantizer and g.proj.in_channels == 16 and g.embed.weight.shape == (32, 8)
    assert (g.kl_weight, g.straight_through, g.temperature) == (0.1, False, 2.0)
    g.set_step(5)
    assert math.isclose(g.temperature, 1.0)


def test_build_quantizer_rejects_unknown_variants() -> None:
    with pytest.raises(ConfigError, match="VQModel.*EMAVQ.*GumbelVQ"):
        build_quantizer("vqvae2", QuantizerConfig(), 32, 8, 8)
    with pytest.raises(ConfigError, match="rvq_levels"):
        build_quantizer("GumbelVQ", QuantizerConfig(rvq_levels=2), 32, 8, 8)


# ---------------------------------------------------------------- two processes (gloo)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, maintained: bool = True) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # forked child: stay out of the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same model on both ranks
        maintenance = MaintenanceConfig(kmeans_init=True, restart_unused_steps=2) if maintained else None
        q = EMAVectorQuantizer(8, 2, decay=0.9, maintenance=maintenance)
        torch.manual_seed(100 + rank)  # different data (and RNG streams) on each rank
        batches = []
        for _ in range(4):
            batches.append(torch.randn(16, 2) * (1 + rank))
            q.train()(as_map(batches[-1]))
        torch.save({"state": q.state_dict(), "batches": batches}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _two_gloo_ranks(maintained: bool) -> tuple[dict, dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        # fork: the children need not import torch again (spawn costs seconds per process)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp, maintained), nprocs=2, join=True,
                           start_method=method)
        return torch.load(os.path.join(tmp, "rank0.pt")), torch.load(os.path.join(tmp, "rank1.pt"))


def test_codebooks_stay_identical_across_two_gloo_ranks() -> None:
    r0, r1 = _two_gloo_ranks(maintained=True)
    s0, s1 = r0["state"], r1["state"]
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def test_nearest_code_runs_at_full_fp32_precision_under_tf32_settings(monkeypatch):
    import vqforge.quantizers.assign as maint

    seen = []
    real = maint.squared_distances

    def spy(z, e):
        seen.append(torch.get_float32_matmul_precision())
        return real(z, e)

    monkeypatch.setattr(maint, "squared_distances", spy)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # what Lightning recommends on GPUs: TF32 matmuls
        z, e = torch.randn(5, 4), torch.randn(7, 4)
        got = maint.nearest_code(z, e)
        assert seen == ["highest"]  # distances computed without TF32
        assert torch.get_float32_matmul_precision() == "high"  # the caller's setting is back afterwards
        assert torch.equal(got, torch.cdist(z.double(), e.double()).argmin(dim=1))
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("bad", [-1, 16])
def test_indices_out_of_range_are_an_error_before_lookup(bad):
    from vqforge.quantizers.vq import VectorQuantizer

    q = VectorQuantizer(16, 4)
    idx = torch.zeros(1, 2, 2, dtype=torch.long)
    assert q.codes_from_indices(idx).shape == (1, 4, 2, 2)
    idx[0, 1, 1] = bad
    with pytest.raises(ValueError, match="out of range.*16 codes"):
        q.codes_from_indices(idx)
    with pytest.raises(ValueError, match="integers"):
        q.codes_from_indices(idx.float())


def test_model_decode_checks_index_range_for_residual_levels():
    from conftest import tiny_config
    from vqforge.models.registry import build as build_model

    cfg = tiny_config(model={"variant": "VQModel", "quantizer": {"rvq_levels": 2}})
    model = build_model(cfg.model).eval()
    idx = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    with torch.no_grad():
        assert model.decode(idx).shape[0] == 1
        idx[0, 1, 0, 0] = 32  # level 1 out of range (K = 32)
        with pytest.raises(ValueError, match="out of range"):
            model.decode(idx)


def test_kmeans_waits_for_enough_vectors_per_code() -> None:
    from vqforge.quantizers.maintenance import KMEANS_MIN_ROWS_PER_CODE, CodebookMaintenance

    k = 16
    m = CodebookMaintenance(k, MaintenanceConfig(kmeans_init=True, kmeans_iters=3, kmeans_batches=1))
    g = torch.Generator().manual_seed(0)
    per_call = 8  # fewer rows per batch than codes: one batch would duplicate codes
    calls = 0
    update = None
    while update is None:
        update = m.kmeans_step(torch.randn(per_call, 3, generator=g))
        calls += 1
        assert calls <= 100
    assert calls * per_call >= KMEANS_MIN_ROWS_PER_CODE * k and (calls - 1) * per_call < KMEANS_MIN_ROWS_PER_CODE * k
    assert torch.unique(update.codes, dim=0).shape[0] == k  # no duplicated codes
    assert float(update.counts.sum()) == pytest.approx(per_call)  # counts per batch


def _kmeans_ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vqforge.quantizers.maintenance import CodebookMaintenance

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = CodebookMaintenance(2, MaintenanceConfig(kmeans_init=True, kmeans_iters=5))
        torch.manual_seed(rank)
        # rank 0's vectors sit near +10, rank 1's near -10 (and rank 1 has more of them)
        z = torch.randn(4 + 2 * rank, 1) * 0.1 + (10.0 if rank == 0 else -10.0)
        update = m.kmeans_step(z)
        torch.save({"codes": update.codes, "counts": update.counts}, os.path.join(out_dir, f"km{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_kmeans_uses_every_ranks_vectors_and_counts_over_ranks() -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        mp.start_processes(_kmeans_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True,
                           start_method=method)
        r0 = torch.load(os.path.join(tmp, "km0.pt"))
        r1 = torch.load(os.path.join(tmp, "km1.pt"))
    assert torch.equal(r0["codes"], r1["codes"]) and torch.equal(r0["counts"], r1["counts"])
    codes = sorted(r0["codes"].flatten().tolist())
    assert codes[0] == pytest.approx(-10.0, abs=0.5) and codes[1] == pytest.approx(10.0, abs=0.5)  # both ranks' data
    # counts on the scale of the all-reduced cluster sizes: the whole step's vectors over both ranks (4 + 6)
    assert sorted(r0["counts"].tolist()) == [4.0, 6.0]


def test_two_rank_ema_codebook_equals_one_process_on_both_ranks_batches() -> None:
    """Equality across ranks would also hold if rank 0's codebook were broadcast; the EMA statistics must be those
    of the global batch: one process that sees both ranks' batches ends with the same codebook."""
    r0, r1 = _two_gloo_ranks(maintained=False)
    torch.manual_seed(0)
    single = EMAVectorQuantizer(8, 2, decay=0.9)
    for b0, b1 in zip(r0["batches"], r1["batches"]):
        single.train()(as_map(torch.cat([b0, b1])))
    ref = single.state_dict()
    assert r0["state"].keys() == ref.keys()
    for k in ref:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
        # summation order differs (all-reduce of two partial sums vs one sum): float tolerance, not bitwise
        torch.testing.assert_close(r0["state"][k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


def test_residual_levels_run_kmeans_in_order() -> None:
    from vqforge.quantizers.assign import nearest_code
    from vqforge.quantizers.base import flatten_channels_last

    torch.manual_seed(0)
    cfg = MaintenanceConfig(kmeans_init=True, kmeans_iters=3, kmeans_batches=2)
    q = ResidualVectorQuantizer(2, 4, 3, kind="vq", maintenance=cfg).train()
    l0, l1 = q.levels[0].maintenance, q.levels[1].maintenance
    batches = [torch.randn(2, 3, 4, 4) for _ in range(3)]  # 32 vectors each >= 4 per code
    with torch.no_grad():
        q(batches[0])
        assert l0.kmeans_pending() and l1.kmeans_pending() and not l1._collected  # level 1 waits for level 0
        q(batches[1])
        assert not l0.kmeans_pending() and l1.kmeans_pending()
        # level 1 collected in this forward, after level 0's k-means: the residuals of the k-means codes
        z = flatten_channels_last(batches[1])
        book0 = q.levels[0].codebook
        expected = z - book0[nearest_code(z, book0)]
        assert len(l1._collected) == 1 and torch.equal(l1._collected[0], expected)
        q(batches[2])
        assert not l1.kmeans_pending()  # kmeans_batches = 2 forwards after level 0's


def test_restart_min_uses_from_the_config_and_its_checks():
    base = {"family": "taming", "variant": "EMAVQ", "n_embed": 16, "embed_dim": 8}
    cfg = parse_config({"model": {**base, "quantizer": {"restart_unused_steps": 2, "restart_min_uses": 3}}})
    q = build_quantizer("EMAVQ", cfg.model.quantizer, 16, 8, 8)
    assert (q.maintenance.cfg.restart_unused_steps, q.maintenance.cfg.restart_min_uses) == (2, 3)
    assert not [p for p, _ in ineffective(cfg) if "restart" in p]
    # without restarts the setting does nothing, and says so
    off = parse_config({"model": {**base, "quantizer": {"restart_min_uses": 3}}})
    assert [p for p, _ in ineffective(off) if "restart" in p] == ["model.quantizer.restart_min_uses"]
    with pytest.raises(ConfigError, match="restart_min_uses.*must be >= 1"):
        parse_config({"model": {**base, "quantizer": {"restart_unused_steps": 2, "restart_min_uses": 0}}})
