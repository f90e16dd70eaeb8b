"""Product quantization with vqforge's codebook maintenance: k-means initialisation and dead-code restarts, each run
per subspace; off by default, so the user's PQ-GAN keys stay exactly theirs."""

from __future__ import annotations

import torch

from vqforge.config import parse_config
from vqforge.config.effects import ineffective
from vqforge.quantizers import MaintenanceConfig, ProductEMAQuantizer, build_quantizer


def _clustered(n: int, s: int, sub: int, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(1, S·sub, 1, n) latents whose subspace s is drawn around k well-separated centres of its own."""
    centres = [torch.randn(k, sub) * 10 for _ in range(s)]
    parts = [c[torch.randint(0, k, (n,))] + 0.01 * torch.randn(n, sub) for c in centres]
    z = torch.cat(parts, dim=1)  # (n, S·sub)
    return z.t().reshape(1, s * sub, 1, n), centres


def test_maintenance_off_keeps_the_users_keys():
    q = ProductEMAQuantizer(8, 8, 4)
    assert q.maintenance is None
    assert all(k.startswith("codebooks.") for k in q.state_dict())


def test_kmeans_init_runs_per_subspace():
    torch.manual_seed(0)
    s, sub, k = 2, 3, 4
    z, centres = _clustered(400, s, sub, k)
    q = ProductEMAQuantizer(k, s * sub, s, decay=0.99, maintenance=MaintenanceConfig(kmeans_init=True, kmeans_iters=10))
    assert set(q.state_dict()) >= {"maintenance.0.kmeans_done", "maintenance.1.kmeans_done"}
    torch.manual_seed(1)
    out = q.train()(z)
    assert all(bool(m.kmeans_done) for m in q.maintenance)
    zf = z[0, :, 0].t()  # (n, S·sub)
    for i in range(s):
        # every subspace's codebook sits on that subspace's own centres (one code each, before the EMA step moved
        # them by (1 − decay) of the batch mean: the batch mean is that same centre)
        book = q.codebooks[i].weight
        d = torch.cdist(centres[i], book)
        assert torch.all(d.min(dim=1).values < 0.1), (i, d.min(dim=1).values)
        # and assignment in that subspace is the nearest of its codes (those before this step's EMA move)
        assert torch.unique(out.indices[0, i, 0]).numel() == k
        assert torch.equal(out.indices[0, i, 0], torch.cdist(zf[:, i * sub:(i + 1) * sub], book).argmin(1))
    # once done (the flag is state: it survives a reload), a later training forward is a plain EMA step: the same
    # as that of a quantizer without maintenance holding the same codebooks
    q.load_state_dict(q.state_dict())
    twin = ProductEMAQuantizer(k, s * sub, s, decay=0.99)
    twin.load_state_dict({key: v for key, v in q.state_dict().items() if key.startswith("codebooks.")})
    z2 = torch.randn_like(z) * 3
    q(z2)
    twin.train()(z2)
    for a, b in zip(q.codebooks, twin.codebooks):
        assert torch.equal(a.weight, b.weight)


def test_dead_codes_restart_per_subspace_to_that_subspaces_vectors():
    torch.manual_seed(0)
    s, sub, k = 2, 2, 8
    q = ProductEMAQuantizer(k, s * sub, s, decay=0.9, maintenance=MaintenanceConfig(restart_unused_steps=2))
    with torch.no_grad():
        for i, book in enumerate(q.codebooks):
            book.weight.fill_(0.0)  # every vector picks code 0: codes 1..7 are dead
            book.weight[1:] += 1000.0 + i
            book.embed_avg.copy_(book.weight)
    z = torch.randn(1, s * sub, 4, 8)
    z[:, sub:] += 50.0  # subspace 1 lives far from subspace 0
    q.train()
    q(z)
    assert all(int(m.steps_unused.max()) == 1 for m in q.maintenance)
    out = q(z)  # second forward: codes 1..7 reach 2 unused steps and restart
    zf = z.permute(0, 2, 3, 1).reshape(-1, s * sub)
    for i, book in enumerate(q.codebooks):
        rows = book.weight[1:]
        data = zf[:, i * sub:(i + 1) * sub]
        # each restarted code is one of this step's vectors of its own subspace
        assert (rows[:, None] - data[None]).abs().amax(dim=2).min(dim=1).values.max() < 1e-5, i
        assert torch.equal(q.maintenance[i].steps_unused, torch.zeros(k, dtype=torch.long))
        assert torch.allclose(book.weight[1:], book.embed_avg[1:] / book.cluster_size[1:, None])
    assert out.stats["usage"] < 1
    q.eval()
    assert torch.unique(q(z).indices[:, 0]).numel() > 1  # the restarted codes are used


def test_pq_maintenance_from_the_config():
    cfg = parse_config({"model": {"family": "taming", "variant": "PQEMAVQ", "n_embed": 16, "embed_dim": 8,
                                  "quantizer": {"num_subspaces": 2, "kmeans_init": True, "kmeans_iters": 3,
                                                "restart_unused_steps": 5}}})
    q = build_quantizer("PQEMAVQ", cfg.model.quantizer, 16, 8, 8)
    assert isinstance(q, ProductEMAQuantizer) and len(q.maintenance) == 2
    m = q.maintenance[0].cfg
    assert (m.kmeans_init, m.kmeans_iters, m.restart_unused_steps) == (True, 3, 5)
    # the maintenance settings take effect for PQ, so they are not reported as having none
    assert not [p for p, _ in ineffective(cfg) if "kmeans" in p or "restart" in p]
