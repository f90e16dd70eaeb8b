"""The package's public names: everything in `vqforge.__all__` resolves, to the same object as in its module."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vqforge
from vqforge.eval.evaluator import evaluate
from vqforge.models.convert import convert_taming_checkpoint
from vqforge.models.output import TokenizerOutput
from vqforge.models.pretrained import save_pretrained
from vqforge.models.taming_zoo import from_taming
from vqforge.quantizers import (EMAVectorQuantizer, GumbelQuantizer, MaintenanceConfig, Quantizer, QuantizerOutput,
                                ResidualVectorQuantizer, VectorQuantizer, build_quantizer)
from vqforge.train.build import build_run

from conftest import REPO


def test_reexports_are_the_modules_objects():
    expected = {
        "TokenizerOutput": TokenizerOutput, "save_pretrained": save_pretrained, "evaluate": evaluate,
        "convert_taming_checkpoint": convert_taming_checkpoint, "build_run": build_run, "Quantizer": Quantizer,
        "QuantizerOutput": QuantizerOutput, "VectorQuantizer": VectorQuantizer,
        "EMAVectorQuantizer": EMAVectorQuantizer, "GumbelQuantizer": GumbelQuantizer,
        "ResidualVectorQuantizer": ResidualVectorQuantizer, "MaintenanceConfig": MaintenanceConfig,
        "build_quantizer": build_quantizer, "from_taming": from_taming,
    }
    for name, obj in expected.items():
        assert name in vqforge.__all__, name
        assert getattr(vqforge, name) is obj, name
    for name in vqforge.__all__:
        assert getattr(vqforge, name) is not None, name
    assert set(vqforge.__all__) <= set(dir(vqforge))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vqforge.nope  # noqa: B018


def test_star_import_and_light_import():
    code = ("import sys; import vqforge; assert 'vqforge.train.build' not in sys.modules; "
            "from vqforge import *; assert VectorQuantizer.__name__ == 'VectorQuantizer'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=120)
