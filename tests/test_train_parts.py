"""The trainer's resumable state as a dict of stateful parts: what is saved where, what a checkpoint may lack,
and that a new part needs nothing but its entry in `Trainer.parts()`."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from vqforge.errors import CheckpointError
from vqforge.train.build import build_run
from vqforge.train.checkpoint import load_checkpoint
from vqforge.train.parts import Counters
from vqforge.train.trainer import Trainer

SECTIONS = dict(loss={"use_gan": True, "disc_start": 0}, train={"ema_decay": 0.9, "num_steps": 2, "save_interval": 2,
                                                                 "validation_interval": 1000})


def _trained(tmp_path, name="run", **sections):
    run = build_run(tiny_config(**{**SECTIONS, **sections}), tmp_path / name)
    try:
        run.trainer.fit()
    finally:
        run.logger.close()
    return run


def test_parts_are_the_checkpoint_layout(tmp_path):
    run = _trained(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert {p.name for p in ckpt.iterdir()} == {"config.json", "model.safetensors", "model_ema.safetensors",
                                                "discriminator.safetensors", "training_state.json",
                                                "training_state.safetensors"}
    state = json.loads((ckpt / "training_state.json").read_text())
    assert list(state) == ["kmeans", "counters", "opt_g", "opt_d", "rng", "rng_per_rank", "data", "last_val"]
    assert state["kmeans"] is None  # no k-means collection under way (none configured)
    assert state["rng_per_rank"] is None  # one process: the "rng" entry is this rank's
    assert state["counters"] == {"step": 2, "disc_steps": 2, "skipped_steps": 0, "bad_in_a_row": 0}
    loaded = load_checkpoint(ckpt)["state"]
    assert set(loaded) == set(run.trainer.parts())
    for k, v in run.trainer.raw_model.state_dict().items():
        assert torch.equal(loaded["model"][k], v), k


def test_a_checkpoint_without_ema_starts_the_ema_from_the_weights(tmp_path):
    _trained(tmp_path, train={**SECTIONS["train"], "ema_decay": None})
    run = build_run(tiny_config(**SECTIONS), tmp_path / "resumed", resume=str(tmp_path / "run"))
    run.logger.close()
    assert "resume: the checkpoint has no EMA weights; EMA starts from the current weights" in \
        (tmp_path / "resumed" / "train.log").read_text()
    for k, v in run.trainer.raw_model.state_dict().items():
        assert torch.equal(run.trainer.ema.state_dict()[k], v), k


def test_a_checkpoint_missing_a_required_part_names_it(tmp_path):
    _trained(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "training_state.json").read_text())
    del state["opt_g"]
    (ckpt / "training_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="has no 'opt_g'"):
        build_run(tiny_config(**SECTIONS), tmp_path / "resumed", resume=str(ckpt))


def test_counters_accept_retired_and_refuse_unknown_entries():
    c = Counters()
    c.load_state_dict({"step": 5, "disc_steps": 2, "skipped_steps": 1, "bad_in_a_row": 0, "images_seen": 40})
    assert c == Counters(step=5, disc_steps=2, skipped_steps=1)
    with pytest.raises(CheckpointError, match="unknown counters"):
        c.load_state_dict({"step": 5, "tokens_seen": 3})


class _Tally:
    """A new piece of resumable state, for the test below."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def state_dict(self) -> dict:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.values = list(state["values"])


def test_a_new_part_is_saved_and_resumed_from_its_entry_alone(tmp_path, monkeypatch):
    real_parts = Trainer.parts

    def parts(self):
        if not hasattr(self, "tally"):
            self.tally = _Tally()
        return {**real_parts(self), "tally": self.tally}

    monkeypatch.setattr(Trainer, "parts", parts)
    run = build_run(tiny_config(**SECTIONS), tmp_path / "run")
    run.trainer.parts()["tally"].values = [3, 1, 4]
    run.trainer.fit()
    run.logger.close()
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "training_state.json").read_text())
    assert saved["tally"] == {"values": [3, 1, 4]}
    resumed = build_run(tiny_config(**SECTIONS), tmp_path / "run", resume=str(tmp_path / "run"))
    resumed.logger.close()
    assert resumed.trainer.tally.values == [3, 1, 4]

    # a vqforge without that part refuses the checkpoint instead of dropping the entry
    monkeypatch.setattr(Trainer, "parts", real_parts)
    with pytest.raises(CheckpointError, match="does not know: tally"):
        build_run(tiny_config(**SECTIONS), tmp_path / "other", resume=str(tmp_path / "run"))


def test_a_run_directory_resolves_to_its_checkpoint_by_the_one_rule(tmp_path):
    from vqforge.train.checkpoint import resolve_checkpoint

    ckpts = tmp_path / "run" / "checkpoints"
    for name in ("step_00000002", "step_00000004"):
        (ckpts / name).mkdir(parents=True)
        for f in ("config.json", "training_state.json"):
            (ckpts / name / f).write_text("{}")
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "step_00000004"  # no `latest`: the highest step
    (ckpts / "latest").write_text("step_00000002\n")
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "step_00000002"
    (ckpts / "latest").write_text(str(ckpts / "step_00000004") + "\n")  # an absolute name
    assert resolve_checkpoint(tmp_path / "run") == ckpts / "step_00000004"
    assert resolve_checkpoint(ckpts / "step_00000002") == ckpts / "step_00000002"
    (ckpts / "step_00000004" / "training_state.json").unlink()
    with pytest.raises(CheckpointError, match="no training_state.json"):
        resolve_checkpoint(tmp_path / "run")


def test_kmeans_batches_for_a_codebook_the_model_lacks_are_refused():
    from vqforge.quantizers import EMAVectorQuantizer
    from vqforge.quantizers.maintenance import MaintenanceConfig
    from vqforge.train.parts import KMeansCollection

    q = EMAVectorQuantizer(8, 2, maintenance=MaintenanceConfig(kmeans_init=True, kmeans_batches=3))
    part = KMeansCollection(q)
    assert part.state_dict() is None  # nothing collected yet: no entry
    part.load_state_dict({"maintenance": [torch.ones(5, 2)]})
    assert part.state_dict()["maintenance"][0].shape == (5, 2)
    with pytest.raises(CheckpointError, match="k-means batches for levels.1.maintenance"):
        part.load_state_dict({"levels.1.maintenance": [torch.ones(5, 2)]})
