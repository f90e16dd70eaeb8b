"""Every config field reaches code outside the config package.

This is the static half of "no dead knobs": a field that no module reads cannot change behaviour. The behavioural
half lives with each component (test_train.py for train.*, test_data_*.py for data.*, test_losses.py for loss.*,
test_quantizers.py / test_models_registry.py / test_vqvae2.py for model.*).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vqforge.config import Config, field_paths

SRC = Path(__file__).resolve().parents[1] / "src" / "vqforge"
CODE = {p: p.read_text() for p in SRC.rglob("*.py") if "config" not in p.relative_to(SRC).parts}


@pytest.mark.parametrize("path", field_paths(Config))
def test_field_is_read_outside_the_config_package(path):
    name = path.rsplit(".", 1)[-1]
    pattern = re.compile(rf"\.{re.escape(name)}\b")
    readers = [p.relative_to(SRC) for p, text in CODE.items() if pattern.search(text)]
    assert readers, f"config field {path} is never read outside vqforge/config: a dead knob"
