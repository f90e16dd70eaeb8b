"""Shared fixtures: tiny configs that train in seconds on CPU."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

# tiny models run fastest on one thread (two spin-wait on a busy 2-core machine)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "taming"

TINY = {
    "model": {
        "family": "taming",
        "variant": "EMAVQ",
        "n_embed": 32,
        "embed_dim": 8,
        "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 8,
                     "resolution": 32, "dropout": 0.0},
    },
    "loss": {"perceptual_weight": 0.0, "use_gan": True, "disc_start": 2, "disc_num_layers": 2, "disc_ndf": 8,
             "disc_weight": 0.8},
    "data": {"source": "sample_photos", "resolution": 32, "resize": 48, "batch_size": 2, "hflip": True},
    "train": {"num_steps": 6, "lr": 1e-3, "save_interval": 3, "validation_interval": 3, "val_max_batches": 1,
              "disc_update_every": 1, "seed": 7},
    "log": {"every": 1, "tensorboard": False, "progress": False},
}


def tiny_dict(**sections) -> dict:
    """TINY with sections deep-merged from keyword arguments, e.g. tiny_dict(loss={"use_gan": False})."""
    d = copy.deepcopy(TINY)

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    merge(d, sections)
    return d


def tiny_config(**sections):
    from vqforge.config import parse_config

    return parse_config(tiny_dict(**sections))


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN
