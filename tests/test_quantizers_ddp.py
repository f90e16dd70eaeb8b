"""FSQ, SimVQ, LFQ, product quantization and the user's residual VQ under real 2-process DDP (gloo, vqforge's own
trainer): every rank ends with the same model and the same quantizer statistics (EMA codebooks, cluster sizes,
dead-code counters, k-means flags), LFQ's batch entropy is the global batch's on both ranks, and a run resumed under
2 processes from its step-2 checkpoint ends bit for bit where the straight run ended.

One pair of forked worker processes trains every quantizer in turn (forking skips a second import of torch and
vqforge per case, which keeps this file fast); each rank reads its own shard of the data, so equal statistics on both
ranks can only come from the all-reduces."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import tiny_dict

STEPS, CKPT = 4, 2
CASES = {
    "fsq": {"model": {"variant": "VQModel", "quantizer": {"type": "fsq", "fsq_levels": [4, 4, 2]}}},
    "simvq": {"model": {"variant": "VQModel", "quantizer": {"type": "simvq"}}},
    "lfq": {"model": {"variant": "VQModel", "quantizer": {"type": "lfq", "lfq_entropy_groups": 1}}},
    # vqforge's maintenance options on: k-means flags and dead-code counters are statistics too
    "pq": {"model": {"variant": "PQEMAVQ", "quantizer": {"num_subspaces": 2, "kmeans_init": True,
                                                          "restart_unused_steps": 1}}},
    "rvq": {"model": {"variant": "EMAVQ", "quantizer": {"rvq_levels": 3, "shared_codebook": True,
                                                         "rvq_loss": "prefix", "restart_unused_steps": 1}}},
}


def _raw(name: str) -> dict:
    return tiny_dict(**CASES[name], loss={"use_gan": False},
                     train={"num_steps": STEPS, "save_interval": CKPT, "validation_interval": CKPT})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vqforge import distributed
    from vqforge.config import parse_config
    from vqforge.train.build import build_run

    distributed.setup(120, "cpu")
    try:
        for name in CASES:
            base = Path(out) / name
            dump: dict = {}
            for label, resume in (("straight", None), ("resumed", base / "straight" / "checkpoints" /
                                                       f"step_{CKPT:08d}")):
                run = build_run(parse_config(_raw(name)), base / label, resume=None if resume is None else str(resume))
                dump[f"{label}_start"] = run.trainer.counters.step
                dump[f"{label}_ddp"] = type(run.trainer.model).__name__
                run.trainer.fit()
                run.logger.close()
                dump[label] = {k: v.detach().clone() for k, v in run.trainer.raw_model.state_dict().items()}
                distributed.barrier()
            if name == "lfq":
                # each rank quantizes different latents; the batch entropy is over both ranks' tokens
                q = run.trainer.raw_model.quantize.train()
                g = torch.Generator().manual_seed(100 + rank)
                z = torch.randn(2, q.embed_dim, 4, 4, generator=g) * 0.01
                with torch.no_grad():
                    out_q = q(z)
                dump["batch_entropy"] = out_q.stats["batch_entropy"]
                dump["lfq_z"] = z
            torch.save(dump, base / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs() -> Path:
    import torch.multiprocessing as mp

    tmp = Path(tempfile.mkdtemp(prefix="vqforge-qddp-"))
    for name in CASES:
        (tmp / name).mkdir()
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True, start_method=method)
    return tmp


def _load(runs: Path, name: str, rank: int) -> dict:
    return torch.load(runs / name / f"rank{rank}.pt", weights_only=True)


STATISTICS = {
    "fsq": (),  # no codebook, no statistics: the replicas' parameters alone
    "simvq": ("quantize.codebook",),  # frozen random codebook
    "lfq": (),
    "pq": ("quantize.codebooks.0.cluster_size", "quantize.codebooks.1.embed_avg", "quantize.maintenance.0.kmeans_done",
           "quantize.maintenance.1.steps_unused"),
    "rvq": ("quantize.embedding.weight", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg",
            "quantize.maintenance.steps_unused"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_end_identical_and_resume_is_exact(runs, name):
    r0, r1 = _load(runs, name, 0), _load(runs, name, 1)
    assert r0["straight_ddp"] == "DistributedDataParallel"
    assert (r0["straight_start"], r0["resumed_start"]) == (0, CKPT)
    a, b = r0["straight"], r1["straight"]
    assert set(STATISTICS[name]) <= a.keys()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"rank 0 vs rank 1 differ: {differ}"
    # the statistics really moved during training (an update that never ran would be equal trivially)
    if name in ("pq", "rvq"):
        key = "quantize.codebooks.0.cluster_size" if name == "pq" else "quantize.embedding.cluster_size"
        assert a[key].sum() > 0
    if name == "pq":
        assert bool(a["quantize.maintenance.0.kmeans_done"]) and bool(a["quantize.maintenance.1.kmeans_done"])
    # exact resume under 2 processes, on both ranks
    for r in (r0, r1):
        assert r["resumed"].keys() == r["straight"].keys()
        differ = [k for k in r["straight"] if not torch.equal(r["straight"][k], r["resumed"][k])]
        assert not differ, f"resumed run differs from the straight run: {differ}"


def test_lfq_batch_entropy_is_the_global_batchs_on_both_ranks(runs):
    from vqforge.quantizers.lfq import LookupFreeQuantizer, batch_entropy

    r0, r1 = _load(runs, "lfq", 0), _load(runs, "lfq", 1)
    assert not torch.equal(r0["lfq_z"], r1["lfq_z"])  # different tokens on the two ranks
    assert torch.equal(r0["batch_entropy"], r1["batch_entropy"])
    # and it is the entropy over both ranks' tokens together, computed in one process
    state = r0["straight"]
    q = LookupFreeQuantizer(32, 8, entropy_groups=1)
    q.load_state_dict({k[len("quantize."):]: v for k, v in state.items() if k.startswith("quantize.")})
    z = torch.cat([r0["lfq_z"], r1["lfq_z"]]).permute(0, 2, 3, 1).reshape(-1, 8)
    with torch.no_grad():
        h = q.project_in(z)
        whole = batch_entropy(4.0 * h / q.temperature, 1)
    torch.testing.assert_close(r0["batch_entropy"], whole, rtol=1e-5, atol=1e-6)
