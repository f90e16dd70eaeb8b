"""Checkpoints written by earlier versions keep resuming exactly.

`tests/fixtures/checkpoint_v1/step_00000002` was written by vqforge before the trainer kept its resumable state as
a dict of stateful parts (see `tests/fixtures/make_checkpoint_v1.py`): a GAN run with weight EMA, saved after two
steps. Resuming it with today's code must reach, after two more steps, the weights that run reached then (their
SHA-256 digests are stored) and the weights of an uninterrupted run of today's code, bit for bit.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from conftest import tiny_config
from vqforge.train.build import build_run

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint_v1"
sys.path.insert(0, str(FIXTURE.parent))
from make_checkpoint_v1 import SECTIONS, digests  # noqa: E402


def _fit(run):
    try:
        run.trainer.fit()
    finally:
        run.logger.close()


def test_a_checkpoint_of_the_earlier_layout_resumes_bitwise(tmp_path):
    # a run directory as the earlier version left it: checkpoints/step_00000002 and `latest` naming it
    run_dir = tmp_path / "old_run"
    shutil.copytree(FIXTURE / "step_00000002", run_dir / "checkpoints" / "step_00000002")
    (run_dir / "checkpoints" / "latest").write_text("step_00000002\n")
    saved = json.loads((run_dir / "checkpoints" / "step_00000002" / "training_state.json").read_text())
    assert set(saved) == {"counters", "opt_g", "opt_d", "rng", "data", "last_val"}  # the earlier layout, unchanged

    resumed = build_run(tiny_config(**SECTIONS), run_dir, resume=str(run_dir))
    assert resumed.trainer.counters.step == 2 and resumed.trainer.counters.disc_steps == 1
    _fit(resumed)
    straight = build_run(tiny_config(**SECTIONS), tmp_path / "straight")
    _fit(straight)

    got, now = digests(resumed.trainer), digests(straight.trainer)
    assert got.keys() == now.keys()
    assert [k for k in got if got[k] != now[k]] == []  # resumed == uninterrupted run of today's code
    expected = json.loads((FIXTURE / "expected_step_4.json").read_text())
    assert [k for k in expected if got.get(k) != expected[k]] == []  # == what the earlier version reached
    assert resumed.trainer.counters == straight.trainer.counters
    assert resumed.trainer.counters.step == 4 and resumed.trainer.counters.disc_steps == 3
    # the checkpoint the resumed run writes is read back by today's code like any other
    again = build_run(tiny_config(**{**SECTIONS, "train": {**SECTIONS["train"], "num_steps": 4}}), tmp_path / "again",
                      resume=str(run_dir))
    again.logger.close()
    assert again.trainer.counters == resumed.trainer.counters
    for p, q in zip(again.trainer.gen_params, resumed.trainer.gen_params):
        assert torch.equal(p, q)
