"""The speed switches of train.*: compile (and its fallback), channels_last, fused_optimizer, precision auto, and a
training step that reads nothing back from the device but its finite/non-finite decision."""

from __future__ import annotations

import json

import pytest
import torch

from vqforge.errors import ConfigError
from vqforge.train import speed
from vqforge.train.build import build_run
from vqforge.utils import resolve_precision

from conftest import tiny_config


def _run(tmp_path, name="run", **sections):
    return build_run(tiny_config(**sections), tmp_path / name)


def _log(tmp_path, name="run") -> str:
    return (tmp_path / name / "train.log").read_text()


class _SpyCompile:
    """Stands in for torch.compile: records what was compiled and counts the calls of the compiled callable."""

    def __init__(self, fail_on_call: bool = False):
        self.compiled, self.calls, self.fail_on_call = [], 0, fail_on_call

    def __call__(self, module, backend=None):
        self.compiled.append((module, backend))

        def compiled(*args, **kwargs):
            self.calls += 1
            if self.fail_on_call:
                raise RuntimeError("inductor: C++ compile error (simulated)\ndetails")
            return module(*args, **kwargs)

        return compiled


def test_compile_is_honoured(tmp_path, monkeypatch):
    spy = _SpyCompile()
    monkeypatch.setattr(speed.torch, "compile", spy)
    monkeypatch.setattr(speed, "compile_unavailable_reason", lambda device: None)
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 2, "compile": True})
    t = run.trainer
    assert isinstance(t.forward, speed.CompiledForward) and spy.compiled[0] == (t.model, speed.COMPILE_BACKEND)
    t.fit()
    run.logger.close()
    assert spy.calls == 2 and t.forward.active  # every training forward went through the compiled callable
    assert "compile True" in _log(tmp_path)
    # the module keeps its own state-dict keys (no _orig_mod. prefix in checkpoints)
    assert all(not k.startswith("_orig_mod") for k in t.raw_model.state_dict())


def test_compile_off_uses_the_module(tmp_path, monkeypatch):
    spy = _SpyCompile()
    monkeypatch.setattr(speed.torch, "compile", spy)
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 1})
    run.logger.close()
    assert run.trainer.forward is run.trainer.model and spy.compiled == []


def test_compile_falls_back_when_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)  # no C++ compiler for inductor's CPU code
    assert "no C++ compiler" in speed.compile_unavailable_reason(torch.device("cpu"))
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 1, "compile": True})
    run.trainer.fit()
    run.logger.close()
    assert run.trainer.forward is run.trainer.model
    log = _log(tmp_path)
    assert "train.compile: no C++ compiler" in log and "training runs in eager mode" in log


def test_compile_failure_at_first_call_falls_back_once(tmp_path, monkeypatch):
    spy = _SpyCompile(fail_on_call=True)
    monkeypatch.setattr(speed.torch, "compile", spy)
    monkeypatch.setattr(speed, "compile_unavailable_reason", lambda device: None)
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 3, "compile": True})
    run.trainer.fit()
    run.logger.close()
    assert spy.calls == 1 and not run.trainer.forward.active and run.trainer.counters.step == 3
    assert _log(tmp_path).count("torch.compile failed (RuntimeError: inductor: C++ compile error (simulated))") == 1


def test_compile_error_after_success_is_not_hidden():
    calls = []

    class Flaky(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            if len(calls) > 1:
                raise ValueError("a real error")
            return x

    fwd = speed.CompiledForward.__new__(speed.CompiledForward)
    fwd.module, fwd._warn, fwd._ok, fwd.compiled = Flaky(), print, False, Flaky()
    fwd(torch.zeros(1))
    with pytest.raises(ValueError, match="a real error"):
        fwd(torch.zeros(1))


def test_real_compile_matches_eager(tmp_path, monkeypatch):
    """torch.compile with graph capture only (the 'eager' backend, no code generation: seconds, not minutes)."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    common = dict(model={"variant": "VQModel"}, loss={"use_gan": False}, data={"hflip": False},
                  train={"num_steps": 1, "fused_optimizer": False})
    a = _run(tmp_path, "a", **common)
    b = _run(tmp_path, "b", **{**common, "train": {**common["train"], "compile": True}})
    ra, rb = a.trainer.train_step(), b.trainer.train_step()
    a.logger.close(), b.logger.close()
    assert b.trainer.forward.active
    assert ra.terms["total_loss"] == pytest.approx(rb.terms["total_loss"], rel=1e-5)
    for pa, pb in zip(a.trainer.gen_params, b.trainer.gen_params):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_channels_last_is_honoured(tmp_path):
    run = _run(tmp_path, train={"num_steps": 3, "channels_last": True}, loss={"disc_start": 0})
    t = run.trainer
    cl = torch.channels_last
    assert t.raw_model.decoder.conv_out.weight.is_contiguous(memory_format=cl)
    assert t.discriminator.main[0].weight.is_contiguous(memory_format=cl)
    assert t.ema is None or t.ema.shadow.decoder.conv_out.weight.is_contiguous(memory_format=cl)
    res = t.train_step()
    assert res.inputs.is_contiguous(memory_format=cl) and res.finite and res.disc_stepped
    t.fit()  # checkpoints of NHWC weights are written and read like any others
    run.logger.close()
    off = _run(tmp_path, "off", train={"num_steps": 1, "channels_last": False})
    off.logger.close()
    assert not off.trainer.raw_model.decoder.conv_out.weight.is_contiguous(memory_format=cl)
    assert not off.trainer.cfg.channels_last
    assert speed.resolve_channels_last(None, torch.device("cpu")) is True
    assert speed.resolve_channels_last(None, torch.device("cuda")) is False  # GroupNorm copies NHWC on CUDA
    assert speed.resolve_channels_last(True, torch.device("cuda")) is True


def test_fused_optimizer_is_honoured(tmp_path):
    on = _run(tmp_path, "on", train={"fused_optimizer": True})
    off = _run(tmp_path, "off", train={"fused_optimizer": False, "optimizer": "adamw"})
    auto = _run(tmp_path, "auto", train={})
    for r in (on, off, auto):
        r.logger.close()
    assert on.trainer.opt_g.param_groups[0]["fused"] and on.trainer.opt_d.param_groups[0]["fused"]
    assert not off.trainer.opt_g.param_groups[0]["fused"] and off.trainer.opt_g.param_groups[0]["foreach"]
    assert isinstance(off.trainer.opt_g, torch.optim.AdamW)
    assert bool(auto.trainer.opt_g.param_groups[0]["fused"]) == speed.fused_supported(torch.device("cpu"))


def test_fused_optimizer_where_unsupported_names_the_fix(monkeypatch):
    monkeypatch.setattr(speed, "fused_supported", lambda device: False)
    with pytest.raises(ConfigError, match="train.fused_optimizer") as e:
        speed.resolve_fused(True, torch.device("cpu"))
    assert "null" in str(e.value)
    assert speed.resolve_fused(None, torch.device("cpu")) is False


def test_precision_auto(monkeypatch):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert tiny_config().train.precision == "auto"


# every way a tensor's value reaches the host (on CUDA each one waits for the device)
_HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy")


def _count_host_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for name in _HOST_READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return reads


@pytest.mark.parametrize("variant", ["VQModel", "EMAVQ"])
def test_a_step_reads_nothing_back_and_a_log_interval_reads_once(tmp_path, monkeypatch, variant):
    """Loss terms, codebook statistics, gradient norms and the finite decision stay on the device: a step reads
    nothing back (fused Adam skips through found_inf, the snapshot and the weight EMA are masked on the device), with
    gradient accumulation, with and without a discriminator step. A log interval reads its means and the skip tally
    once."""
    run = _run(tmp_path, model={"variant": variant}, loss={"disc_start": 0},
               train={"num_steps": 6, "ema_decay": 0.9, "grad_accum_steps": 2, "disc_update_every": 2,
                      "validation_interval": 1000, "save_interval": 1000}, log={"every": 5, "image_every": 1000})
    t = run.trainer
    t.train_step()  # first-step work (optimizer state) happens outside the count
    reads = _count_host_reads(monkeypatch)
    results = [t.train_step() for _ in range(3)]  # steps 1, 2, 3: the discriminator trains at 2 only
    assert reads == [], reads
    assert [r.disc_applied is not None for r in results] == [False, True, False]
    assert all(isinstance(v, (torch.Tensor, float)) for r in results for v in r.device_terms.values())
    assert isinstance(results[1].device_terms["disc_loss"], torch.Tensor)
    assert [r.disc_stepped for r in results] == [False, True, False]  # each a read when asked
    assert t._counters.disc_steps == 0  # not yet settled: steps 0-3 are still on the device
    assert t.counters.disc_steps == 2 and t._counters.disc_steps == 2  # asking settles them (one read)

    # fit runs steps 4 and 5 (completed steps 5 and 6): both end a log interval (every 5, and the last step), which
    # reads its means once; the last step's checkpoint and validation are not counted here
    del reads[:]
    saves = []
    monkeypatch.setattr(t, "save", lambda metric=None: saves.append(t.counters.step))
    monkeypatch.setattr(t, "validate", lambda step: {})
    t.fit()
    assert reads == ["tolist"] * 2, reads  # 2 log intervals, nothing per step
    assert saves == [6]
    monkeypatch.undo()
    run.logger.close()
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l["split"] == "train"]
    assert [l["step"] for l in train] == [5, 6] and train[0]["disc_steps"] == 3.0
    assert all(isinstance(train[0][k], float) for k in ("total_loss", "g_loss", "grad_norm", "codebook/usage"))


def test_step_result_terms_are_floats(tmp_path):
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 1})
    res = run.trainer.train_step()
    run.logger.close()
    assert all(isinstance(v, float) for v in res.terms.values())
    assert res.terms["total_loss"] == pytest.approx(float(res.device_terms["total_loss"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the prefetcher copies to a CUDA device")
def test_device_prefetcher_position(tmp_path):  # pragma: no cover - CUDA only
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 1, "device": "cuda"})
    t = run.trainer
    assert isinstance(t.stream, speed.DevicePrefetcher)
    x = next(t.stream)
    assert x.is_cuda and x.dtype == torch.float32
    assert t.stream.state_dict()["batches"] == 1  # the held next batch is not counted
    run.logger.close()


def test_resumed_adam_moments_take_the_channels_last_layout(tmp_path):
    run = _run(tmp_path, loss={"use_gan": False}, train={"num_steps": 2, "save_interval": 1, "channels_last": True})
    run.trainer.fit()
    run.logger.close()
    resumed = build_run(tiny_config(loss={"use_gan": False}, train={"num_steps": 3, "channels_last": True}),
                        tmp_path / "resumed", resume=str(tmp_path / "run" / "checkpoints" / "step_00000001"))
    resumed.logger.close()
    opt = resumed.trainer.opt_g
    w = resumed.trainer.raw_model.decoder.conv_out.weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    for k in ("exp_avg", "exp_avg_sq"):
        assert opt.state[w][k].stride() == w.stride()
