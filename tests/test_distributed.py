"""Training under torchrun (DistributedDataParallel, gloo on CPU): identical replicas, equivalence with one process
at the same global batch, exact resume, and bounded failure.

Each test launches `python -m torch.distributed.run --standalone --nproc_per_node=2` (or 1) in a subprocess with a
timeout; `tests/dist_worker.py` wraps `vqforge.cli.main` with probes (per-rank state dumps, injected failures).
About ten seconds per launch on a 2-core machine, nearly all of it importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, tiny_config, tiny_dict

WORKER = REPO / "tests" / "dist_worker.py"
LAUNCH_TIMEOUT_S = 120  # a hung launch fails the test instead of the whole suite


def _launch(args: list[str], cwd: Path, nproc: int = 2, timeout: float = LAUNCH_TIMEOUT_S) -> tuple[int, str, float]:
    """torchrun `args` (a script path or `-m module` plus its arguments); returns (exit code, output, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so a timeout can end all its workers
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout}s:\n{out[-4000:]}")
    return proc.returncode, out, time.monotonic() - t0


def _write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(tiny_dict(**sections)))
    return path


def _dump(d: Path, rank: int) -> dict:
    return torch.load(d / f"rank{rank}.pt", weights_only=True)


def _assert_tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: tensors differ: {differ[:8]}"


def _train_log(run_dir: Path) -> list[dict]:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if l["split"] == "train"]


# GAN on from step 2 (adaptive weight under DDP, discriminator with BatchNorm), EMA codebook, dropout (draws from
# each rank's own torch RNG stream, so an exact resume needs every rank's RNG state), random crops and flips
GAN = dict(
    model={"ddconfig": {"dropout": 0.1}},
    loss={"use_gan": True, "disc_start": 2},
    train={"num_steps": 6, "save_interval": 3, "validation_interval": 3, "ema_decay": 0.9},
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """A 2-process run of 6 steps (checkpoints at 3 and 6) with each rank's final state dumped."""
    d = tmp_path_factory.mktemp("straight")
    cfg = _write_config(d / "gan.yaml", **GAN)
    rc, out, _ = _launch([str(WORKER), "--dump", str(d / "dump"), "--", "train", str(cfg), "--out", str(d / "run")], d)
    assert rc == 0, out[-4000:]
    return d


@pytest.fixture(scope="module")
def resumed(straight) -> Path:
    """The same run, resumed under 2 processes from its step-3 checkpoint into a new run directory."""
    d = straight / "resumed"
    d.mkdir()
    ckpt = straight / "run" / "checkpoints" / "step_00000003"
    rc, out, _ = _launch([str(WORKER), "--dump", str(d / "dump"), "--", "train", str(straight / "gan.yaml"),
                          "--out", str(d / "run"), "--resume", str(ckpt)], d)
    assert rc == 0, out[-4000:]
    return d


def test_two_ranks_end_with_identical_model_discriminator_and_codebook(straight):
    r0, r1 = _dump(straight / "dump", 0), _dump(straight / "dump", 1)
    assert r0["ddp"] == "DistributedDataParallel"  # really trained under DDP
    assert r0["counters"]["step"] == 6 and r0["counters"]["disc_steps"] == 4
    t = r0["tensors"]
    assert any(k.startswith("disc.") and "running_mean" in k for k in t)  # BatchNorm statistics are compared too
    assert {"model.quantize.embedding.weight", "model.quantize.embedding.cluster_size",
            "model.quantize.embedding.embed_avg"} <= t.keys()
    assert any(k.startswith("ema.") for k in t)
    _assert_tensors_equal(r0["tensors"], r1["tensors"], "rank 0 vs rank 1")
    assert r0["counters"] == r1["counters"]
    # the adaptive weight (autograd.grad through the DDP-wrapped decoder) was computed from step 2 on
    lines = _train_log(straight / "run")
    assert [l["step"] for l in lines] == [1, 2, 3, 4, 5, 6]
    assert all(l["d_weight"] > 0 and "disc_loss" in l for l in lines[2:])


def test_resolved_config_states_global_batch_and_world_size(straight):
    text = (straight / "run" / "config.yaml").read_text()
    assert "# derived at start: global batch 4 = data.batch_size 2 × 2 process(es) × train.grad_accum_steps 1" in text
    log = (straight / "run" / "train.log").read_text()
    assert log.count("resolved config:") == 1  # only rank 0 logs
    # rank 0 alone writes; every rank's RNG state is in the checkpoint (each rank has its own stream)
    state = json.loads((straight / "run" / "checkpoints" / "step_00000003" / "training_state.json").read_text())
    assert len(state["rng_per_rank"]) == 2


def test_resume_under_two_processes_continues_at_the_exact_step(straight, resumed):
    log = (resumed / "run" / "train.log").read_text()
    assert "at step 3" in log
    for r in (0, 1):
        a, b = _dump(straight / "dump", r), _dump(resumed / "dump", r)
        assert b["counters"] == a["counters"] and b["counters"]["step"] == 6
        assert b["data"] == a["data"]  # same data position
        _assert_tensors_equal(a["tensors"], b["tensors"], f"rank {r}: resumed vs straight")
    a = load_file(str(straight / "run" / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(resumed / "run" / "checkpoints" / "step_00000006" / "model.safetensors"))
    _assert_tensors_equal(a, b, "saved step-6 checkpoints")


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    from vqforge.train.build import build_run

    # deterministic data: the 2-process global batch is the 1-process batch (rank r takes samples r, r+2, ...);
    # 3 steps, the second with batches that span two epochs
    fixed = dict(loss={"use_gan": False}, data={"shuffle": False, "hflip": False, "random_crop": False},
                 train={"num_steps": 3, "lr": 1e-4, "save_interval": 3, "validation_interval": 3})
    cfg2 = _write_config(tmp_path / "two.yaml", **fixed)
    # the `vqforge` module under torchrun, as users launch it
    rc, out, _ = _launch(["-m", "vqforge", "train", str(cfg2), "--out", str(tmp_path / "two")], tmp_path)
    assert rc == 0, out[-4000:]
    assert "2 process(es)" in (tmp_path / "two" / "config.yaml").read_text()

    run = build_run(tiny_config(**dict(fixed, data={**fixed["data"], "batch_size": 4})), tmp_path / "one")
    model = run.trainer.raw_model
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        run.trainer.fit()
    finally:
        run.logger.close()
    assert "global batch 4 = data.batch_size 4 × 1 process(es)" in (tmp_path / "one" / "config.yaml").read_text()

    # the logged training losses are means over ranks, so they are the global batch's losses
    log1, log2 = _train_log(tmp_path / "one"), _train_log(tmp_path / "two")
    assert [l["step"] for l in log1] == [l["step"] for l in log2] == [1, 2, 3]
    for a, b in zip(log1, log2):
        for k in ("total_loss", "rec_loss", "quant_loss", "grad_norm"):
            assert abs(a[k] - b[k]) < 1e-5, (a["step"], k, a[k], b[k])

    ckpt = Path("checkpoints") / "step_00000003" / "model.safetensors"
    w2, w1 = load_file(str(tmp_path / "two" / ckpt)), load_file(str(tmp_path / "one" / ckpt))
    assert w1.keys() == w2.keys() == initial.keys()
    # Both runs average the same per-sample gradients, summed in a different order, so they differ by rounding
    # (about 1e-7 relative). Adam divides each gradient element by its own running RMS, which turns rounding into
    # visible weight differences where an element's gradient is itself rounding-sized: (a) elements whose exact
    # gradient is zero (conv biases feeding a GroupNorm of one channel per group, attention key biases) step by
    # ±lr whatever the size of their noise; they are identified by an RMS gradient < 1e-7 and left out (few, biases
    # only); (b) a handful of elements with strong cancellation. So: 99.9% of the weights agree within 1e-6 and at
    # most 0.01% differ by more than 1e-5 (a real difference, e.g. a rank's data or codebook statistics missing
    # from the average, moves most weights by ~lr = 1e-4).
    opt, names = run.trainer.opt_g, {id(p): n for n, p in model.named_parameters()}
    noise = {}
    for p in run.trainer.gen_params:
        st = opt.state[p]
        rms = (st["exp_avg_sq"] / (1 - 0.9 ** int(st["step"]))).sqrt()  # train.betas [0.5, 0.9]
        noise[names[id(p)]] = rms < 1e-7
    n_noise = sum(int(m.sum()) for m in noise.values())
    assert n_noise < 1e-3 * sum(v.numel() for v in w1.values())
    assert all(k.endswith("bias") for k, m in noise.items() if m.any())
    diffs = []
    for k in w1:
        d = (w1[k].float() - w2[k].float()).abs().flatten()
        diffs.append(d[~noise[k].flatten()] if k in noise else d)
    d = torch.cat(diffs)
    assert torch.quantile(d, 0.999).item() < 1e-6, "2 processes × batch 2 vs 1 process × batch 4 differ"
    assert int((d > 1e-5).sum()) <= 1e-4 * d.numel(), f"{int((d > 1e-5).sum())} weights differ by > 1e-5"
    codebook = ("quantize.embedding.weight", "quantize.embedding.embed_avg", "quantize.embedding.cluster_size")
    assert all((w1[k] - w2[k]).abs().max().item() < 1e-5 for k in codebook)  # EMA statistics summed over ranks
    moved = max((w1[k].float() - initial[k].float()).abs().max().item() for k in w1)
    assert moved > 1e-4  # the comparison is not between untrained weights


def test_failure_on_rank_1_ends_every_rank_with_a_message_naming_it(tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", loss={"use_gan": False}, train={"num_steps": 50})
    rc, out, seconds = _launch([str(WORKER), "--fail-rank", "1", "--fail-step", "2", "--", "train", str(cfg),
                                "--out", str(tmp_path / "run")], tmp_path)
    assert rc != 0
    assert "rank 1: RuntimeError: injected failure at step 2" in out
    assert seconds < 60
    assert "finished 50 steps" not in out
    assert not (tmp_path / "run" / "model").exists()  # no export from a failed run


def test_hung_rank_is_given_up_on_after_dist_timeout(tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", loss={"use_gan": False}, train={"num_steps": 50, "dist_timeout_s": 3})
    rc, out, seconds = _launch([str(WORKER), "--fail-rank", "1", "--fail-step", "2", "--fail-mode", "hang", "--",
                                "train", str(cfg), "--out", str(tmp_path / "run")], tmp_path)
    assert rc != 0
    # rank 0 waits in the step's all-reduce for the rank that never arrives, gives up and names itself
    assert "rank 0: " in out and "timed out" in out.lower()
    assert "communication failure" in out
    assert seconds < 60  # rank 1 sleeps for an hour: torchrun ended it once rank 0 failed


def test_non_finite_loss_on_one_rank_only_skips_the_step_on_every_rank(tmp_path):
    cfg = _write_config(tmp_path / "c.yaml", loss={"use_gan": False}, train={"num_steps": 4, "save_interval": 100})
    rc, out, _ = _launch([str(WORKER), "--nan-rank", "1", "--nan-step", "2", "--dump", str(tmp_path / "dump"), "--",
                          "train", str(cfg), "--out", str(tmp_path / "run")], tmp_path)
    assert rc == 0, out[-4000:]
    r0, r1 = _dump(tmp_path / "dump", 0), _dump(tmp_path / "dump", 1)
    # rank 0's own loss and gradients were finite (rank 1's NaN is added to its loss value only), yet it skipped too
    assert r0["counters"]["skipped_steps"] == r1["counters"]["skipped_steps"] == 1
    assert r0["counters"]["step"] == r1["counters"]["step"] == 4
    _assert_tensors_equal(r0["tensors"], r1["tensors"], "after a step skipped for rank 1's NaN")
