"""Trainer behaviour: use_gan semantics, discriminator cadence, exact resume, non-finite guard, schedules, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vqforge.losses.objective as objective_mod
from vqforge.errors import CheckpointError, TrainingError
from vqforge.train.build import build_run
from vqforge.train.schedules import lr_factor

from conftest import tiny_config, tiny_dict
from vqforge.config import parse_config


def _run(tmp_path: Path, name: str = "run", resume=None, **sections):
    return build_run(tiny_config(**sections), tmp_path / name, resume=resume)


def _fit(run):
    try:
        return run.trainer.fit()
    finally:
        run.logger.close()


@pytest.fixture
def count_adaptive(monkeypatch):
    calls = []
    real = objective_mod.adaptive_weight

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(objective_mod, "adaptive_weight", counting)
    return calls


def _train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if l["split"] == "train"]


def test_use_gan_false_builds_no_discriminator(tmp_path, count_adaptive):
    run = _run(tmp_path, loss={"use_gan": False})
    t = run.trainer
    assert t.discriminator is None and t.opt_d is None and t.cfg.gan is None
    _fit(run)
    assert count_adaptive == []
    assert t.counters.disc_steps == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000006"
    assert not (ckpt / "discriminator.safetensors").exists()
    assert all("disc" not in k and not k.startswith("loss.") for k in load_file(str(ckpt / "model.safetensors")))
    state = json.loads((ckpt / "training_state.json").read_text())
    assert state["opt_d"] is None
    lines = _train_lines(tmp_path / "run")
    assert lines and all(l["disc_factor"] == 0.0 and l["disc_steps"] == 0 for l in lines)
    assert not any(k.startswith("g_loss") or k == "disc_loss" for l in lines for k in l if l.get(k, 0) != 0)
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("use_gan: false: no discriminator is built") == 1


@pytest.mark.parametrize(
    "every,warmup,disc_start",
    [(1, 0, 2), (3, 0, 0), (2, 2, 4), (3, 1, 3)],
)
def test_discriminator_cadence_and_adaptive_weight_calls(tmp_path, count_adaptive, every, warmup, disc_start):
    run = _run(tmp_path, loss={"use_gan": True, "disc_start": disc_start},
               train={"disc_update_every": every, "disc_warmup_steps": warmup, "num_steps": 6})
    d_forward = []
    run.trainer.discriminator.register_forward_hook(lambda *a: d_forward.append(1))
    _fit(run)
    first = max(0, disc_start - warmup)
    expected_d = [s for s in range(6) if s >= first and s % every == 0]
    assert run.trainer.counters.disc_steps == len(expected_d)
    # the adaptive weight is computed only where the adversarial term counts (disc_factor > 0)
    assert len(count_adaptive) == len([s for s in range(6) if s >= disc_start])
    lines = _train_lines(tmp_path / "run")
    assert [l["disc_factor"] for l in lines] == [1.0 if s >= disc_start else 0.0 for s in range(6)]


def _weights(run) -> dict[str, torch.Tensor]:
    t = run.trainer
    out = {f"model.{k}": v.clone() for k, v in t.raw_model.state_dict().items()}
    if t.discriminator is not None:
        out.update({f"disc.{k}": v.clone() for k, v in t.discriminator.state_dict().items()})
    if t.ema is not None:
        out.update({f"ema.{k}": v.clone() for k, v in t.ema.state_dict().items()})
    return out


def test_resume_is_bitwise_identical(tmp_path):
    common = dict(loss={"use_gan": True, "disc_start": 1}, train={"ema_decay": 0.9, "disc_update_every": 2,
                                                                  "save_interval": 100, "validation_interval": 2})
    straight = _run(tmp_path, "straight", **{**common, "train": {**common["train"], "num_steps": 6}})
    _fit(straight)
    first = _run(tmp_path, "split", **{**common, "train": {**common["train"], "num_steps": 3}})
    _fit(first)
    second = _run(tmp_path, "split", resume=str(tmp_path / "split"), **{**common, "train": {**common["train"], "num_steps": 6}})
    assert second.trainer.counters.step == 3
    _fit(second)
    a, b = _weights(straight), _weights(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.trainer.counters == second.trainer.counters


def test_resume_with_another_architecture_is_an_error(tmp_path):
    _fit(_run(tmp_path, train={"num_steps": 2, "save_interval": 2}))
    with pytest.raises(CheckpointError, match="different model configuration"):
        _run(tmp_path, "other", resume=str(tmp_path / "run"), model={"n_embed": 64})


# every: the host learns of skips at each log interval (1: every step) and at each save, whichever comes first
@pytest.mark.parametrize("log_every", [1, 5])
def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch, log_every):
    real = objective_mod.VQGANObjective.generator_loss
    bad_steps = {2}

    def flaky(self, x, out, step, last_layer, discriminator):
        res = real(self, x, out, step, last_layer, discriminator)
        if step in bad_steps:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(objective_mod.VQGANObjective, "generator_loss", flaky)
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 4, "max_bad_steps": 2, "save_interval": 1},
               log={"every": log_every})
    codebook_before = {}

    orig_step = run.trainer.train_step

    def spy():
        if run.trainer.counters.step == 2:
            codebook_before["w"] = run.trainer.raw_model.state_dict()["quantize.embedding.weight"].clone()
            codebook_before["p"] = [p.detach().clone() for p in run.trainer.gen_params]
        res = orig_step()
        if run.trainer.counters.step == 3:
            # the skipped step changed nothing: neither weights nor the EMA codebook
            assert torch.equal(run.trainer.raw_model.state_dict()["quantize.embedding.weight"], codebook_before["w"])
            assert all(torch.equal(p, q) for p, q in zip(run.trainer.gen_params, codebook_before["p"]))
        return res

    run.trainer.train_step = spy
    _fit(run)
    assert run.trainer.counters.skipped_steps == 1 and run.trainer.counters.step == 4
    assert "w" in codebook_before

    bad_steps.update(range(3, 100))
    run = _run(tmp_path, "stops", loss={"use_gan": False}, train={"num_steps": 10, "max_bad_steps": 2, "save_interval": 1},
               log={"every": log_every})
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        _fit(run)
    ckdir = tmp_path / "stops" / "checkpoints"
    kept = sorted(p.name for p in ckdir.glob("step_*"))
    # steps 0-1 fine, step 2 skipped (state restored, saved as step 3), step 3 the second bad one in a row: stop
    # before saving anything from it
    assert kept[-1] == "step_00000003"
    assert (ckdir / "latest").read_text().strip() == "step_00000003"
    weights = load_file(str(ckdir / "step_00000003" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert "1 step(s) skipped for a non-finite loss or gradient, the last at step 3" in \
        (tmp_path / "stops" / "train.log").read_text()


def test_without_saves_the_stop_comes_at_the_log_interval_that_sees_the_bad_run(tmp_path, monkeypatch):
    _nan_generator_loss(monkeypatch, set(range(1, 100)))
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 20, "max_bad_steps": 2, "save_interval": 100,
                                                         "validation_interval": 100}, log={"every": 4})
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row \(the last at step 3\)"):
        _fit(run)
    c = run.trainer.counters
    assert c.step == 4 and c.skipped_steps == 3 and c.bad_in_a_row == 3


def test_lr_schedules():
    assert lr_factor(5, "constant", total_steps=10) == 1.0
    assert lr_factor(0, "constant", total_steps=10, warmup_steps=4) == 0.25
    assert lr_factor(25, "exponential", total_steps=100, decay=0.5, decay_every=10) == 0.25
    assert lr_factor(2, "cosine", total_steps=12, warmup_steps=2) == 1.0
    assert lr_factor(7, "cosine", total_steps=12, warmup_steps=2) == pytest.approx(0.5)
    assert lr_factor(12, "cosine", total_steps=12, warmup_steps=2, min_ratio=0.1) == pytest.approx(0.1)


def test_lr_reaches_optimizers(tmp_path):
    run = _run(tmp_path, train={"num_steps": 4, "lr": 1e-3, "disc_lr": 5e-4, "lr_schedule": "exponential",
                                "lr_decay": 0.5, "lr_decay_every": 2})
    _fit(run)
    assert [l["lr"] for l in _train_lines(tmp_path / "run")] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
    assert run.trainer.opt_d.param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_taming_learning_rate_rule(tmp_path):
    cfg = tiny_dict(train={"base_learning_rate": 1e-5, "grad_accum_steps": 2, "num_steps": 1})
    del cfg["train"]["lr"]  # lr and base_learning_rate together are a config error
    run = build_run(parse_config(cfg), tmp_path / "run")
    run.logger.close()
    # base × batch (2) × processes (1) × accumulation (2)
    assert run.trainer.cfg.lr_plan.base_lr == pytest.approx(4e-5)
    assert run.config_dict["train"]["resolved_lr"] == pytest.approx(4e-5)


def test_gradient_accumulation_matches_larger_batch(tmp_path):
    common = dict(model={"variant": "VQModel"}, loss={"use_gan": False},
                  data={"hflip": False, "shuffle": False}, train={"num_steps": 1, "optimizer": "adamw", "lr": 1e-2})
    a = _run(tmp_path, "a", **{**common, "data": {**common["data"], "batch_size": 2}})
    b = _run(tmp_path, "b", **{**common, "data": {**common["data"], "batch_size": 1},
                               "train": {**common["train"], "grad_accum_steps": 2}})
    _fit(a), _fit(b)
    # compare the accumulated gradients (still in .grad after the step); Adam's first update is close to
    # lr·sign(g), so weights would magnify float noise in near-zero gradients (e.g. conv biases before GroupNorm)
    ga = torch.cat([p.grad.flatten() for p in a.trainer.raw_model.parameters()])
    gb = torch.cat([p.grad.flatten() for p in b.trainer.raw_model.parameters()])
    assert (ga - gb).norm() <= 1e-5 * ga.norm()


def _grad_vector_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.double()) for p in params
                                                       if p.grad is not None])))


def test_grad_clip_scales_the_gradient_to_the_clip_and_logs_the_norm_before(tmp_path):
    base = dict(loss={"use_gan": False}, model={"variant": "VQModel"}, train={"num_steps": 1})
    free = _run(tmp_path, "free", **base)
    _fit(free)
    g = _grad_vector_norm(free.trainer.gen_params)  # the gradients stay in .grad after the (last) step
    logged_free = _train_lines(tmp_path / "free")[0]["grad_norm"]
    assert logged_free == pytest.approx(g, rel=1e-5)
    clip = 0.5 * g
    clipped = _run(tmp_path, "clipped", **{**base, "train": {"num_steps": 1, "grad_clip": clip}})
    _fit(clipped)
    assert _grad_vector_norm(clipped.trainer.gen_params) == pytest.approx(clip, rel=1e-5)
    # the logged grad_norm is the norm before clipping (the same gradient as the unclipped run)
    assert _train_lines(tmp_path / "clipped")[0]["grad_norm"] == pytest.approx(g, rel=1e-5)


def _float_and_other_keys(sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    floats = [k for k, v in sd.items() if v.dtype.is_floating_point]
    return floats, [k for k in sd if k not in floats]


def test_weight_ema_follows_the_formula_for_every_tensor(tmp_path):
    # codebook maintenance keeps an integer buffer (steps each code went unused) that changes every step
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 2, "ema_decay": 0.75},
               model={"quantizer": {"restart_unused_steps": 100}})
    t = run.trainer
    shadows = []
    real_update = t.ema.update

    def spy(model, step, applied=None):
        before = {k: v.clone() for k, v in t.ema.state_dict().items()}
        real_update(model, step, applied)
        shadows.append((before, {k: v.clone() for k, v in model.state_dict().items()},
                        {k: v.clone() for k, v in t.ema.state_dict().items()}))

    t.ema.update = spy
    _fit(run)
    assert len(shadows) == 2
    floats, others = _float_and_other_keys(shadows[0][1])
    assert others, "the test model has no integer buffers: it no longer checks that they are copied"
    assert len(floats) > 20
    # trainable parameters are averaged with the warm-up decay min(d, (1+t)/(10+t)); everything else (buffers, the
    # EMA codebook, frozen parameters, integer maintenance counters) is copied
    trainable = {n for n, q in t.raw_model.named_parameters() if q.requires_grad}
    assert "quantize.embedding.weight" not in trainable  # EMAVQ: its codebook is an EMA of its own
    for step, (before, model, after) in enumerate(shadows):
        assert after.keys() == model.keys()
        d = min(0.75, (1 + step) / (10 + step))
        for k in model:
            if k in trainable:
                torch.testing.assert_close(after[k], torch.lerp(before[k], model[k], 1 - d), rtol=0, atol=1e-6, msg=k)
            else:
                assert torch.equal(after[k], model[k]), k
    assert any(not torch.equal(shadows[1][0][k], shadows[1][1][k]) for k in others)  # the copy had work to do
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "model_ema.safetensors").exists()


def _capture_step0(run) -> dict:
    """Hooks: dtype of decoder.conv_out's output during training, indices of the first training forward."""
    seen = {"conv_out": [], "indices": None}
    model = run.trainer.raw_model
    model.decoder.conv_out.register_forward_hook(
        lambda m, i, o: seen["conv_out"].append(o.dtype) if model.training else None)

    def first_indices(m, i, o):
        if m.training and seen["indices"] is None:
            seen["indices"] = o.indices.detach().clone()

    model.register_forward_hook(first_indices)
    return seen


def test_bf16_precision_runs_the_model_in_bf16_and_tracks_fp32(tmp_path):
    common = dict(loss={"use_gan": False}, data={"hflip": False})
    fp32 = _run(tmp_path, "fp32", **common, train={"num_steps": 2, "precision": "fp32"})
    bf16 = _run(tmp_path, "bf16", **common, train={"num_steps": 2, "precision": "bf16"})
    a, b = fp32.trainer.raw_model.state_dict(), bf16.trainer.raw_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same initial weights
    seen32, seen16 = _capture_step0(fp32), _capture_step0(bf16)
    _fit(fp32), _fit(bf16)
    assert seen16["conv_out"] and set(seen16["conv_out"]) == {torch.bfloat16}
    assert set(seen32["conv_out"]) == {torch.float32}
    # the encoder ran in bf16, so its output differs slightly and a few near-tie codes may differ; the assignment
    # itself is float32 (the quantizer's own test checks the exact argmin under autocast)
    agree = (seen16["indices"] == seen32["indices"]).float().mean().item()
    assert agree >= 0.9, agree
    assert bf16.trainer.counters.skipped_steps == 0
    l32, l16 = _train_lines(tmp_path / "fp32"), _train_lines(tmp_path / "bf16")
    assert len(l32) == len(l16) == 2
    for x, y in zip(l32, l16):
        for k in ("total_loss", "rec_loss"):
            assert abs(x[k] - y[k]) <= 2e-2, (k, x[k], y[k])
    # bf16 really changed the arithmetic (rules out an autocast that does nothing)
    assert l32[0]["rec_loss"] != l16[0]["rec_loss"]


def test_keep_last_and_best(tmp_path):
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 6, "save_interval": 1, "keep_last": 2,
                                                         "validation_interval": 1})
    # validation psnr that peaks in the middle (a tiny model's psnr only rises): step 3 is the best, not the last
    real_eval = run.trainer.evaluate_fn
    fake_psnr = {1: 10.0, 2: 12.0, 3: 15.0, 4: 11.0, 5: 14.0, 6: 13.0}

    def evaluate(net, batches, step):
        metrics, grid = real_eval(net, batches, step=step)
        return {**metrics, "psnr": fake_psnr[step]}, grid

    run.trainer.evaluate_fn = evaluate
    _fit(run)
    ckdir = tmp_path / "run" / "checkpoints"
    best = json.loads((ckdir / "best.json").read_text())
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = {l["step"]: l["psnr"] for l in lines if l["split"] == "val"}
    assert sorted(val) == [1, 2, 3, 4, 5, 6]
    best_step = max(val, key=lambda s: (val[s], -s))  # the first step that reached the highest psnr
    assert best["step"] == best_step and best["value"] == pytest.approx(val[best_step])
    assert best["checkpoint"] == f"step_{best_step:08d}" and best_step == 3
    kept = {p.name for p in ckdir.glob("step_*")}
    assert kept == {"step_00000005", "step_00000006", best["checkpoint"]}
    assert (ckdir / "latest").read_text().strip() == "step_00000006"


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    import vqforge.train.checkpoint as ck

    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 2, "save_interval": 1})
    real = ck.save_tree
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_tree", failing)
    with pytest.raises(OSError):
        _fit(run)
    ckdir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("step_*")) == ["step_00000001"]
    assert (ckdir / "latest").read_text().strip() == "step_00000001"

# --- a skipped step restores everything it touched (k-means, ActNorm, discriminator buffers) -----------------------

def _nan_generator_loss(monkeypatch, bad_steps: set[int], poison_recon: bool = False):
    real = objective_mod.VQGANObjective.generator_loss

    def flaky(self, x, out, step, last_layer, discriminator):
        if poison_recon and step in bad_steps:  # the discriminator sees a non-finite reconstruction
            out.reconstruction = out.reconstruction * float("nan")
        res = real(self, x, out, step, last_layer, discriminator)
        if step in bad_steps:
            res.total = res.total * float("nan")
        return res

    monkeypatch.setattr(objective_mod.VQGANObjective, "generator_loss", flaky)


@pytest.mark.parametrize("variant", ["VQModel", "EMAVQ"])
def test_nan_at_the_kmeans_step_restores_the_codebook_and_reruns_kmeans(tmp_path, monkeypatch, variant):
    _nan_generator_loss(monkeypatch, {0})
    run = _run(tmp_path, model={"variant": variant, "quantizer": {"kmeans_init": True, "kmeans_iters": 2}},
               loss={"use_gan": False}, train={"num_steps": 2, "save_interval": 2})
    t = run.trainer
    q = t.raw_model.quantize
    before = q.codebook.detach().clone()
    t.train_step()  # k-means fires in this forward, then the loss is NaN: skipped
    assert t.counters.skipped_steps == 1
    assert torch.equal(q.codebook, before)  # not the k-means codebook of a skipped step
    assert not bool(q.maintenance.kmeans_done) and not q.maintenance._kmeans_known_done
    t.train_step()  # finite: k-means runs now, in this process
    assert bool(q.maintenance.kmeans_done) and not torch.equal(q.codebook, before)
    run.logger.close()


def test_nan_mid_kmeans_collection_restores_the_collected_batches(tmp_path, monkeypatch):
    _nan_generator_loss(monkeypatch, {1})
    run = _run(tmp_path, model={"quantizer": {"kmeans_init": True, "kmeans_iters": 2, "kmeans_batches": 3}},
               loss={"use_gan": False}, train={"num_steps": 3, "save_interval": 3})
    t = run.trainer
    m = t.raw_model.quantize.maintenance
    t.train_step()
    assert len(m._collected) == 1
    t.train_step()  # skipped: its (non-finite step's) batch is not kept for k-means
    assert len(m._collected) == 1 and t.counters.skipped_steps == 1
    run.logger.close()


@pytest.mark.parametrize("quantizer", [
    {"kmeans_init": True, "kmeans_iters": 2, "kmeans_batches": 3},  # one codebook, checkpoint after 2 of 3 batches
    # per-level codebooks initialise in order: at the checkpoint level 0 is done and level 1 holds 1 of 2 batches
    {"kmeans_init": True, "kmeans_iters": 2, "kmeans_batches": 2, "rvq_levels": 2, "shared_codebook": False},
], ids=["single", "residual_levels"])
def test_resume_during_kmeans_collection_is_bitwise(tmp_path, quantizer):
    common = dict(model={"quantizer": quantizer}, loss={"use_gan": False},
                  train={"save_interval": 100, "validation_interval": 100})
    straight = _run(tmp_path, "straight", **{**common, "train": {**common["train"], "num_steps": 5}})
    _fit(straight)
    first = _run(tmp_path, "split", **{**common, "train": {**common["train"], "num_steps": 2}})
    _fit(first)
    maint = [m for m in first.trainer.raw_model.modules() if type(m).__name__ == "CodebookMaintenance"]
    assert maint and not bool(maint[-1].kmeans_done) and maint[-1]._collected  # saved during a collection
    saved = json.loads((tmp_path / "split" / "checkpoints" / "step_00000002" / "training_state.json").read_text())
    assert saved["kmeans"]  # the collected batches are in the checkpoint, outside the model's keys
    assert not any("collect" in k for k in load_file(tmp_path / "split" / "checkpoints" / "step_00000002" /
                                                        "model.safetensors"))
    second = _run(tmp_path, "split", resume=str(tmp_path / "split"),
                  **{**common, "train": {**common["train"], "num_steps": 5}})
    _fit(second)
    a, b = _weights(straight), _weights(second)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert all(bool(m.kmeans_done) for m in second.trainer.raw_model.modules()
               if type(m).__name__ == "CodebookMaintenance")
    # after k-means ran the part is empty again: later checkpoints carry no k-means entry
    final = json.loads((tmp_path / "split" / "checkpoints" / "step_00000005" / "training_state.json").read_text())
    assert final["kmeans"] is None


@pytest.mark.parametrize("disc_norm", ["act", "batch"])
def test_nan_reconstruction_at_the_first_adversarial_step_leaves_the_discriminator_untouched(
        tmp_path, monkeypatch, disc_norm):
    _nan_generator_loss(monkeypatch, {0}, poison_recon=True)
    run = _run(tmp_path, loss={"disc_start": 0, "disc_norm": disc_norm},
               train={"num_steps": 3, "save_interval": 3})
    t = run.trainer
    d = getattr(t.discriminator, "module", t.discriminator)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    t.train_step()
    assert t.counters.skipped_steps == 1
    after = d.state_dict()
    for k, v in before.items():  # parameters (ActNorm loc/scale) and buffers (initialized, BN running stats)
        assert torch.equal(after[k], v), k
    if disc_norm == "act":
        norms = [m for m in d.modules() if hasattr(m, "_known_initialized")]
        assert norms and all(not m._known_initialized and int(m.initialized) == 0 for m in norms)
    t.train_step()  # a finite step initialises ActNorm from finite data and trains on
    assert t.counters.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in d.state_dict().values() if v.is_floating_point())
    if disc_norm == "act":
        assert all(int(m.initialized) == 1 for m in d.modules() if hasattr(m, "_known_initialized"))
    run.logger.close()


def test_actnorm_does_not_initialise_from_a_non_finite_batch():
    from vqforge.losses.discriminator import ActNorm

    norm = ActNorm(3).train()
    norm(torch.full((2, 3, 4, 4), float("nan")))
    assert int(norm.initialized) == 0 and torch.equal(norm.loc, torch.zeros_like(norm.loc))
    x = torch.randn(2, 3, 4, 4)
    norm(x)
    assert int(norm.initialized) == 1 and torch.allclose(norm.loc.flatten(), -x.transpose(0, 1).reshape(3, -1).mean(1))


def test_adamw_decays_only_weight_matrices_outside_the_quantizer(tmp_path):
    run = _run(tmp_path, model={"variant": "VQModel"}, loss={"use_gan": True},
               train={"optimizer": "adamw", "weight_decay": 0.1})
    t = run.trainer
    names = {id(p): n for n, p in t.raw_model.named_parameters()}
    decayed = {names[id(p)] for g in t.opt_g.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in t.opt_g.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "quantize.embedding.weight" in plain and "quantize.embedding.weight" not in decayed
    assert decayed and all(t.raw_model.get_parameter(n).dim() >= 2 and not n.startswith("quantize.") for n in decayed)
    assert any(n.endswith(".bias") for n in plain) and any("norm" in n for n in plain)
    assert decayed | plain == {n for n, p in t.raw_model.named_parameters() if p.requires_grad}
    # the codebook is not pulled towards 0 when its gradient is zero (AdamW would shrink it by lr * wd each step)
    cb = t.raw_model.quantize.embedding.weight
    before = cb.detach().clone()
    cb.grad = torch.zeros_like(cb)
    t.opt_g.step()
    assert torch.equal(cb, before)
    d_groups = [g["weight_decay"] for g in t.opt_d.param_groups]
    assert d_groups == [0.1, 0.0]
    run.logger.close()


def test_optimizer_state_saved_with_one_group_loads_into_the_decay_groups(tmp_path):
    from vqforge.train.optim import load_optimizer_state

    run = _run(tmp_path, loss={"use_gan": False}, train={"optimizer": "adamw", "weight_decay": 0.1})
    t = run.trainer
    params = t.gen_params
    old = torch.optim.AdamW(params, lr=1e-3)  # the layout of checkpoints written before the groups
    for p in params:
        p.grad = torch.randn_like(p)
    old.step()
    load_optimizer_state(t.opt_g, old.state_dict(), params)
    for p in params:
        assert torch.equal(t.opt_g.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert [g["weight_decay"] for g in t.opt_g.param_groups] == [0.1, 0.0]
    run.logger.close()


def test_gan_with_a_frozen_decoder_last_layer_is_refused_at_build(tmp_path, monkeypatch):
    import vqforge.train.build as build_mod
    from vqforge.errors import ConfigError

    real = build_mod.build_model

    def frozen_last(cfg):
        model = real(cfg)
        model.last_layer.requires_grad_(False)  # e.g. an encoder-only fine-tune
        return model

    monkeypatch.setattr(build_mod, "build_model", frozen_last)
    with pytest.raises(ConfigError, match="loss.use_gan") as e:
        _run(tmp_path)
    assert "last layer is frozen" in str(e.value) and "use_gan: false" in str(e.value)
    run = _run(tmp_path, "nogan", loss={"use_gan": False})  # without the GAN a frozen last layer is fine
    run.logger.close()


def test_weight_ema_copies_codebook_state_and_warms_up(tmp_path):
    from vqforge.train.ema import WeightEMA, ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1) and ema_decay_at(0.999, 10**6) == 0.999
    run = _run(tmp_path, model={"variant": "EMAVQ", "quantizer": {"kmeans_init": True, "kmeans_iters": 2}},
               loss={"use_gan": False}, train={"num_steps": 2, "ema_decay": 0.999})
    t = run.trainer
    model = t.raw_model
    ema = WeightEMA(model, 0.999)
    t.train_step()  # k-means moves the EMA codebook far from its random init
    ema.update(model, 0)
    shadow = ema.state_dict()
    grad_free = {n for n, p in model.named_parameters() if not p.requires_grad} | {n for n, _ in model.named_buffers()}
    assert any(n.startswith("quantize.") for n in grad_free)
    for n in grad_free:  # EMA codebook (weight, cluster_size, embed_avg), k-means flag: copied, not averaged
        assert torch.equal(shadow[n], model.state_dict()[n]), n
    # trainable weights are averaged with the warmed-up decay; at a late step with the configured one
    before = {k: v.clone() for k, v in shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    ema.update(model, 10**6)
    k = "decoder.conv_out.weight"
    now = model.state_dict()[k]
    assert torch.allclose(ema.state_dict()[k], before[k] + (1 - 0.999) * (now - before[k]), atol=1e-6)
    run.logger.close()


# --- checkpoints: durable, `latest` always valid, resume falls back past a damaged newest checkpoint -----------------

def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path):
    cfg = dict(loss={"use_gan": False}, train={"num_steps": 4, "save_interval": 2, "keep_last": 3})
    _fit(_run(tmp_path, **cfg))
    ckdir = tmp_path / "run" / "checkpoints"
    newest = ckdir / "step_00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated copy
    with pytest.warns(UserWarning, match="step_00000004") as w:
        run = _run(tmp_path, resume=str(tmp_path / "run"), **{**cfg, "train": {**cfg["train"], "num_steps": 6}})
    assert "step_00000002" in str(w[0].message)
    assert run.trainer.counters.step == 2
    run.logger.close()
    # `latest` naming a directory that is gone: the newest intact one as well
    (ckdir / "latest").write_text("step_00000099\n")
    with pytest.warns(UserWarning, match="step_00000099"):
        run = _run(tmp_path, resume=str(tmp_path / "run"), **cfg)
    assert run.trainer.counters.step == 2
    run.logger.close()
    # a damaged checkpoint named directly is an error, not a silent substitute
    with pytest.raises(CheckpointError, match="step_00000004"):
        _run(tmp_path, "direct", resume=str(ckdir / "step_00000004"), **cfg)


def test_resaving_a_step_never_leaves_latest_naming_a_missing_directory(tmp_path, monkeypatch):
    import vqforge.train.checkpoint as ckpt_mod

    cfg = dict(loss={"use_gan": False}, train={"num_steps": 4, "save_interval": 2, "keep_last": 3})
    _fit(_run(tmp_path, **cfg))
    ckdir = tmp_path / "run" / "checkpoints"
    real = ckpt_mod.commit_dir
    seen = []

    def checking(tmp, final):
        named = (ckdir / "latest").read_text().strip() if (ckdir / "latest").exists() else None
        seen.append((final.name, named))
        assert named != final.name  # the directory about to be swapped is not the one `latest` names
        real(tmp, final)

    monkeypatch.setattr(ckpt_mod, "commit_dir", checking)
    run = _run(tmp_path, resume=str(ckdir / "step_00000002"), **cfg)  # resumes at 2 and re-saves step 4
    _fit(run)
    assert ("step_00000004", "step_00000002") in seen
    assert (ckdir / "latest").read_text().strip() == "step_00000004"


def test_rng_state_saves_only_this_ranks_cuda_device(monkeypatch):
    from vqforge.train import state as state_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every visible device"))
    s = state_mod.rng_state()
    assert torch.equal(s["cuda"], torch.tensor([7], dtype=torch.uint8))


def test_resume_from_an_older_checkpoint_does_not_duplicate_logged_rows(tmp_path, monkeypatch):
    import sys
    import types

    # a stand-in wandb module records how runs are opened (wandb itself is not installed here)
    inits = []
    fake = types.ModuleType("wandb")
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    fake.Image = lambda grid: grid
    fake.init = lambda **kw: inits.append(kw) or types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tb_kwargs = []
    import torch.utils.tensorboard as tb_mod

    class FakeWriter:
        def __init__(self, **kw):
            tb_kwargs.append(kw)

        def add_scalar(self, *a, **k):
            pass

        def add_image(self, *a, **k):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tb_mod, "SummaryWriter", FakeWriter)
    cfg = dict(loss={"use_gan": False}, train={"num_steps": 4, "save_interval": 2, "keep_last": 3},
               log={"wandb": True, "tensorboard": True})
    _fit(_run(tmp_path, **cfg))
    ckdir = tmp_path / "run" / "checkpoints"
    _fit(_run(tmp_path, resume=str(ckdir / "step_00000002"), **cfg))  # steps 3-4 are trained and logged again
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), keys  # each (split, step) once
    assert ("train", 4) in keys and ("train", 1) in keys
    assert tb_kwargs[0].get("purge_step") is None and tb_kwargs[1]["purge_step"] == 3
    assert [kw["id"] for kw in inits] == ["abc123", "abc123"] and inits[1]["resume"] == "allow"


def _around_step(t, step, before, after):
    """Wrap t.train_step: run before() when the trainer is about to do step `step` and after(result) right after it."""
    real_step = t.train_step

    def spy():
        if t.counters.step == step:
            before()
        res = real_step()
        if t.counters.step == step + 1:
            after(res)
        return res

    t.train_step = spy


def test_finite_loss_with_an_infinite_gradient_is_skipped(tmp_path):
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 4, "max_bad_steps": 2})
    t = run.trainer
    # the loss stays finite; only the gradient reaching one weight is infinite (a backward hook)
    t.raw_model.decoder.conv_out.weight.register_hook(lambda g: g * math.inf if t.counters.step == 2 else g)
    seen = {}

    def before():
        seen["before"] = {k: v.clone() for k, v in t.raw_model.state_dict().items()}

    def after(res):
        seen["finite_loss"] = math.isfinite(res.terms["total_loss"])
        seen["after"] = {k: v.clone() for k, v in t.raw_model.state_dict().items()}

    _around_step(t, 2, before, after)
    _fit(run)
    assert seen["finite_loss"]
    assert t.counters.skipped_steps == 1 and t.counters.step == 4
    changed = [k for k in seen["before"] if not torch.equal(seen["before"][k], seen["after"][k])]
    assert not changed, f"the skipped step changed {changed[:5]}"
    assert all(torch.isfinite(p).all() for p in t.gen_params)


def test_non_finite_discriminator_gradient_skips_only_the_discriminator_step(tmp_path):
    run = _run(tmp_path, loss={"use_gan": True, "disc_start": 0}, train={"num_steps": 4, "disc_update_every": 1})
    t = run.trainer
    d_first = next(p for p in t.disc_params if p.dim() == 4)
    d_first.register_hook(lambda g: g * math.nan if t.counters.step == 2 else g)
    seen = {}

    def before():
        seen["d"] = {k: v.clone() for k, v in t.discriminator.state_dict().items()}
        seen["g"] = [p.detach().clone() for p in t.gen_params]

    def after(res):
        seen["d_after"] = {k: v.clone() for k, v in t.discriminator.state_dict().items()}
        seen["g_after"] = [p.detach().clone() for p in t.gen_params]
        seen["stepped"] = res.disc_stepped

    _around_step(t, 2, before, after)
    _fit(run)
    assert seen["stepped"] is False
    assert t.counters.disc_steps == 3 and t.counters.skipped_steps == 1
    # the discriminator's weights are as before its skipped step (its BatchNorm statistics also move in the generator
    # step's forward, which no snapshot covers yet: review C2)
    weights = [k for k, _ in t.discriminator.named_parameters()]
    changed = [k for k in weights if not torch.equal(seen["d"][k], seen["d_after"][k])]
    assert not changed, f"the skipped discriminator step changed {changed[:5]}"
    # the generator step of the same iteration went ahead
    assert any(not torch.equal(a, b) for a, b in zip(seen["g"], seen["g_after"]))
    assert all(torch.isfinite(p).all() for p in t.disc_params)
    assert "non-finite discriminator loss or gradient; discriminator step skipped" in (tmp_path / "run" / "train.log").read_text()


# fused: the decision stays on the device (found_inf, masked restore); foreach: the step reads it back
@pytest.mark.parametrize("fused", [None, False], ids=["fused_on_device", "foreach_host_decision"])
def test_non_finite_generator_step_also_undoes_the_discriminator_step_of_its_iteration(tmp_path, fused):
    """Both backward passes run before the one finite decision; a non-finite generator step skips the
    discriminator step too, and everything either forward wrote (BatchNorm statistics of the discriminator) and the
    discriminator's optimizer state are as before the iteration."""
    run = _run(tmp_path, loss={"use_gan": True, "disc_start": 0}, train={"num_steps": 4, "disc_update_every": 1,
                                                                         "fused_optimizer": fused, "ema_decay": 0.9})
    t = run.trainer
    t.raw_model.decoder.conv_out.weight.register_hook(lambda g: g * math.inf if t.counters.step == 2 else g)
    seen = {}

    def before():
        seen["d"] = {k: v.clone() for k, v in t.discriminator.state_dict().items()}
        seen["g"] = {k: v.clone() for k, v in t.raw_model.state_dict().items()}
        seen["opt_d"] = {i: {k: v.clone() for k, v in s.items()} for i, s in t.opt_d.state_dict()["state"].items()}
        seen["opt_g"] = {i: {k: v.clone() for k, v in s.items()} for i, s in t.opt_g.state_dict()["state"].items()}
        seen["ema"] = {k: v.clone() for k, v in t.ema.state_dict().items()}
        seen["disc_steps"] = t.counters.disc_steps

    def after(res):
        seen["finite"], seen["stepped"] = res.finite, res.disc_stepped
        seen["d_after"] = {k: v.clone() for k, v in t.discriminator.state_dict().items()}
        seen["g_after"] = {k: v.clone() for k, v in t.raw_model.state_dict().items()}
        seen["opt_d_after"] = {i: {k: v.clone() for k, v in s.items()}
                               for i, s in t.opt_d.state_dict()["state"].items()}
        seen["opt_g_after"] = {i: {k: v.clone() for k, v in s.items()}
                               for i, s in t.opt_g.state_dict()["state"].items()}
        seen["ema_after"] = {k: v.clone() for k, v in t.ema.state_dict().items()}
        seen["disc_steps_after"] = t.counters.disc_steps

    _around_step(t, 2, before, after)
    _fit(run)
    assert seen["finite"] is False and seen["stepped"] is False
    # the weight EMA and both optimizers' moments and step counts are as before the skipped iteration
    assert [k for k in seen["ema"] if not torch.equal(seen["ema"][k], seen["ema_after"][k])] == []
    for i, s in seen["opt_g"].items():
        assert all(torch.equal(v, seen["opt_g_after"][i][k]) for k, v in s.items()), i
    assert seen["disc_steps_after"] == seen["disc_steps"] and t.counters.skipped_steps == 1
    assert any("running_mean" in k for k in seen["d"])  # BatchNorm statistics are among what is compared
    changed = [k for k in seen["d"] if not torch.equal(seen["d"][k], seen["d_after"][k])]
    changed += [k for k in seen["g"] if not torch.equal(seen["g"][k], seen["g_after"][k])]
    assert not changed, f"the skipped iteration changed {changed[:5]}"
    for i, s in seen["opt_d"].items():
        assert all(torch.equal(v, seen["opt_d_after"][i][k]) for k, v in s.items()), i
    assert t.counters.disc_steps == 3  # steps 0, 1 and 3
