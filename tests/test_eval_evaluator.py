"""`vqforge.eval.evaluate`: one pass, metrics equal to direct computation, residual depth curve, multi-process sums."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vqforge
from vqforge.config.schema import DDConfig, ModelConfig, QuantizerConfig, VQVAE2Config
from vqforge.eval import fid, metrics
from vqforge.eval.evaluator import evaluate
from vqforge.utils import is_better


def tiny_taming(rvq_levels: int = 1, variant: str = "EMAVQ", seed: int = 0, shared: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(family="taming", variant=variant, n_embed=16, embed_dim=8,
                      ddconfig=DDConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=8,
                                        resolution=32),
                      quantizer=QuantizerConfig(rvq_levels=rvq_levels, shared_codebook=shared))
    return vqforge.build_model(cfg)


def tiny_vqvae2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(family="vqvae2", variant=None,
                      vqvae2=VQVAE2Config(hidden_channels=32, res_channels=8, nb_res_layers=1, nb_levels=2,
                                          embed_dim=8, nb_entries=16, scaling_rates=[2, 2]))
    return vqforge.build_model(cfg)


def images(n: int, seed: int = 1, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def batches_of(x: torch.Tensor, b: int):
    return [x[i:i + b] for i in range(0, x.shape[0], b)]


def _reference(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out


def test_metrics_equal_direct_computation_over_all_batches():
    model = tiny_taming()
    x = images(6)
    res = evaluate(model, batches_of(x, 4))
    out = _reference(model, x)
    y = out.reconstruction
    assert res.num_images == 6 and (res.height, res.width) == (16, 16)
    assert res.psnr == pytest.approx(metrics.psnr(x, y), rel=1e-9)
    assert res.ssim == pytest.approx(metrics.ssim(x, y), rel=1e-9)
    mse = metrics.mse_per_image(x, y)
    assert res.mse == pytest.approx(float(mse.mean()), rel=1e-9)
    assert res.psnr_aggregate == pytest.approx(float(metrics.psnr_from_mse(mse.mean())), rel=1e-9)
    assert res.rec_loss == pytest.approx(float((x - y).abs().mean()), rel=1e-5)
    # usage over the whole set, not the last batch
    counts = torch.bincount(out.indices.flatten(), minlength=16)
    assert res.usage_counts[0].tolist() == counts.tolist()
    (st,) = res.codebook
    assert st.used == int((counts > 0).sum()) and st.tokens == 6 * 8 * 8
    assert res.bpp == pytest.approx(8 * 8 * math.log2(16) / (16 * 16))
    assert res.layout == "single" and res.depth_curve == []


def test_pixel_loss_l2_and_stand_in_lpips_and_rfid():
    model = tiny_taming()
    x = images(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()

    def l1_lpips(a, b):  # stand-in perceptual distance, (N, 1, 1, 1) like LPIPS
        return (a - b).abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    res = evaluate(model, batches_of(x, 2), lpips=l1_lpips, inception=net, pixel_loss="l2")
    y = _reference(model, x).reconstruction
    assert res.rec_loss == pytest.approx(float((x - y).pow(2).mean()), rel=1e-5)
    assert res.lpips == pytest.approx(float((x - y).abs().mean()), rel=1e-5)
    with torch.no_grad():
        assert res.rfid == pytest.approx(fid.fid_from_features(net(x), net(y)), rel=1e-6, abs=1e-9)
    assert res.rfid > 0
    assert "lpips" not in res.skipped and "rfid" not in res.skipped


def test_max_images_counts_images_not_batches():
    model = tiny_taming()
    res = evaluate(model, batches_of(images(8), 3), max_images=5)
    assert res.num_images == 5
    assert sum(s.tokens for s in res.codebook) == 5 * 8 * 8


def test_eval_mode_is_used_and_restored_and_ema_codebook_untouched():
    model = tiny_taming().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, batches_of(images(4), 2))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_residual_depth_curve():
    model = tiny_taming(rvq_levels=3)
    x = images(4)
    res = evaluate(model, batches_of(x, 2))
    out = _reference(model, x)
    assert res.layout == "residual" and len(res.codebook) == 3
    assert [p.depth for p in res.depth_curve] == [1, 2, 3]
    with torch.no_grad():
        for p in res.depth_curve:
            yd = model.decode(out.indices[:, :p.depth])
            assert p.psnr == pytest.approx(metrics.psnr(x, yd), rel=1e-9)
            assert p.ssim == pytest.approx(metrics.ssim(x, yd), rel=1e-9)
            assert p.bpp == pytest.approx(p.depth * 8 * 8 * 4 / (16 * 16))
    assert res.depth_curve[-1].psnr == pytest.approx(res.psnr)
    assert res.bpp == pytest.approx(res.depth_curve[-1].bpp)
    for lvl, st in enumerate(res.codebook):
        assert res.usage_counts[lvl].tolist() == torch.bincount(out.indices[:, lvl].flatten(), minlength=16).tolist()
        assert st.tokens == 4 * 8 * 8
    s = res.scalars()
    assert {"depth1/psnr", "depth3/psnr", "l0/usage", "l2/perplexity", "l1/dead_codes"} <= set(s)


@pytest.mark.parametrize("shared", [False, True])
def test_usage_of_all_levels_together(shared):
    """A shared codebook pools the levels' counts (a code is dead only if no level uses it); separate codebooks
    count their D*K codes; one level has no total."""
    model = tiny_taming(rvq_levels=3, shared=shared)
    x = images(4)
    res = evaluate(model, batches_of(x, 2))
    idx = _reference(model, x).indices
    if shared:
        used = idx.unique().numel()
        assert res.codebook_total.num_codes == 16 and res.codebook_total.used == used
        expected = torch.bincount(idx.flatten(), minlength=16)
    else:
        used = sum(idx[:, d].unique().numel() for d in range(3))
        assert res.codebook_total.num_codes == 48 and res.codebook_total.used == used
        expected = torch.cat([torch.bincount(idx[:, d].flatten(), minlength=16) for d in range(3)])
    p = expected.double() / expected.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    s = res.scalars()
    assert s["usage"] == pytest.approx(used / res.codebook_total.num_codes)
    assert s["perplexity"] == pytest.approx(perplexity, rel=1e-9)
    assert s["dead_codes"] == res.codebook_total.num_codes - used
    assert json.loads(json.dumps(res.to_json()))["codebook_total"]["used"] == used
    single = evaluate(tiny_taming(), batches_of(x, 2))
    assert single.codebook_total is None and single.to_json()["codebook_total"] is None


def test_hierarchical_levels():
    model = tiny_vqvae2()
    x = images(3)
    res = evaluate(model, batches_of(x, 2))
    out = _reference(model, x)
    assert res.layout == "hierarchical" and len(res.codebook) == 2
    shapes = [m.shape[1:] for m in out.indices]
    for lvl, m in enumerate(out.indices):
        assert res.usage_counts[lvl].tolist() == torch.bincount(m.flatten(), minlength=16).tolist()
    assert res.bpp == pytest.approx(sum(h * w * 4 for h, w in shapes) / (16 * 16))
    assert res.psnr == pytest.approx(metrics.psnr(x, out.reconstruction), rel=1e-9)


def test_json_schema_and_skip_reasons():
    res = evaluate(tiny_taming(rvq_levels=2), batches_of(images(2), 2))
    j = json.loads(json.dumps(res.to_json()))
    assert set(j) == {"num_images", "resolution", "psnr", "psnr_aggregate", "ssim", "mse", "rec_loss", "pixel_loss",
                      "lpips", "rfid", "layout", "bits_per_pixel", "codebook", "codebook_total", "depth_curve", "baselines",
                      "skipped", "seconds"}
    assert j["baselines"] == {}  # only with evaluate(baselines=True)
    assert j["lpips"] is None and j["rfid"] is None
    assert set(j["skipped"]) == {"lpips", "rfid"}
    assert set(j["codebook"][0]) == {"level", "num_codes", "used", "dead", "usage", "perplexity", "entropy_bits",
                                     "tokens"}
    assert set(j["depth_curve"][0]) == {"depth", "bpp", "psnr", "ssim", "lpips"}
    assert isinstance(j["psnr"], float) and j["resolution"] == [16, 16]


def test_infinite_psnr_becomes_null_in_json():
    class Identity(torch.nn.Module):  # a "tokenizer" that reconstructs perfectly
        num_codes, depth = 4, 1

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            from vqforge.models.output import TokenizerOutput

            return TokenizerOutput(x.clone(), torch.zeros(x.shape[0], 2, 2, dtype=torch.long), torch.zeros(()))

    res = evaluate(Identity(), [images(2)])
    assert math.isinf(res.psnr) and res.to_json()["psnr"] is None
    assert res.ssim == pytest.approx(1.0)


def test_empty_data_is_a_user_error():
    from vqforge.errors import DataError

    with pytest.raises(DataError, match="no images"):
        evaluate(tiny_taming(), [])


def test_is_better_direction():
    assert is_better("psnr", 30.0, 29.0) and not is_better("psnr", 28.0, 29.0)
    assert is_better("lpips", 0.1, 0.2) and is_better("rfid", 3.0, 4.0) and is_better("rec_loss", 0.1, None)


# ------------------------------------------------------------------------------------------ several processes


class _SimulatedRanks:
    """Stand-in for `vqforge.distributed` under two processes, run one after the other.

    Pass 1 plays rank 1 and records every tensor it hands to all_reduce_sum; pass 2 plays rank 0 and adds the
    recorded tensor of the same call to its own, which is what a real all-reduce does. Rank 0's result is then the
    two-process result. (A rank's reductions are always issued in the same order, so call i matches call i.)
    """

    def __init__(self):
        self.recorded: list[torch.Tensor] = []
        self.rank = 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.rank == 1:
            self.recorded.append(t.clone())
        else:
            t += self.recorded.pop(0)
        return t


def _patch_ranks(monkeypatch, sim: _SimulatedRanks) -> None:
    from vqforge.eval import codebook as cb_mod, evaluator as ev_mod, fid as fid_mod

    for mod in (ev_mod.dist, cb_mod, fid_mod):
        monkeypatch.setattr(mod, "all_reduce_sum", sim.all_reduce_sum)
    monkeypatch.setattr(ev_mod.dist, "world_size", lambda: 2)
    monkeypatch.setattr(ev_mod.dist, "rank", lambda: sim.rank)


def _stand_in_net() -> torch.nn.Module:
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()


def test_sums_across_processes_equal_one_process(monkeypatch):
    model = tiny_taming(rvq_levels=2)
    net = _stand_in_net()
    x = images(7)
    sim = _SimulatedRanks()
    _patch_ranks(monkeypatch, sim)
    results = {}
    for r in (1, 0):
        sim.rank = r
        # max_images 6 over 2 processes: 3 each, from uneven shards of 4 and 3 images
        results[r] = evaluate(model, batches_of(x[r::2], 2), inception=net, max_images=6)
    assert not sim.recorded  # every recorded tensor was consumed by a matching call
    both = results[0]
    monkeypatch.undo()
    union = evaluate(model, batches_of(torch.cat([x[0::2][:3], x[1::2][:3]]), 2), inception=net)
    assert both.num_images == union.num_images == 6
    for key in ("psnr", "ssim", "mse", "rec_loss", "rfid", "bpp"):
        assert getattr(both, key) == pytest.approx(getattr(union, key), rel=1e-6), key
    assert [c.tolist() for c in both.usage_counts] == [c.tolist() for c in union.usage_counts]
    assert [p.psnr for p in both.depth_curve] == pytest.approx([p.psnr for p in union.depth_curve], rel=1e-9)


def test_process_without_images_still_joins_the_reduction(monkeypatch):
    model = tiny_taming(rvq_levels=2)
    net = _stand_in_net()
    x = images(3)
    sim = _SimulatedRanks()
    _patch_ranks(monkeypatch, sim)
    alone = evaluate(model, batches_of(x, 2), inception=net)  # rank 1 (recording) has all the images
    sim.rank = 0
    empty = evaluate(model, [], inception=net)  # rank 0 got no data: it must still issue the same reductions
    assert not sim.recorded
    assert empty.num_images == 3 and (empty.height, empty.width) == (16, 16)
    for key in ("psnr", "ssim", "rfid", "bpp"):
        assert getattr(empty, key) == pytest.approx(getattr(alone, key), rel=1e-9), key
    assert [p.psnr for p in empty.depth_curve] == pytest.approx([p.psnr for p in alone.depth_curve], rel=1e-9)
