"""bench/quality.py: the `--network patch` protocol builds and trains, and the more-held-out photos are real and
outside the training split."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from conftest import REPO


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_quality", None)


@pytest.mark.parametrize("name", ["fsq-16384", "lfq-16384", "simvq-512"])
def test_patch_network_is_f4_ch64_and_trains(quality, tmp_path, name):
    from vqforge.config import parse_config

    cfg = parse_config(quality.case_config(name, 2, "patch"))
    assert cfg.model.family == "patch"
    assert (cfg.model.patch.factor, cfg.model.patch.channels) == (4, 64)
    # the same quantizer section and code width as the taming network's row
    taming = quality.case_config(name, 2, "taming")
    assert quality.case_config(name, 2, "patch")["model"]["quantizer"] == taming["model"]["quantizer"]
    assert taming["model"]["family"] == "taming" and taming["model"]["ddconfig"]["ch"] == 64

    case = quality.Case(name, 2, tmp_path / name, "patch")
    try:
        before = [p.detach().clone() for p in case.trainer.model.parameters() if p.requires_grad]
        case.train_step()
        case.train_step()
        assert case.step == 2
        after = [p.detach() for p in case.trainer.model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(before, after))
        crops = quality.heldout_crops([64])  # 2 photos x a few crops at shorter side 64
        more = quality.heldout_crops([64], names=["grace_hopper"])
        row = case.measure(crops, None, more)
    finally:
        case.close()
    assert row["network"] == "patch" and row["step"] == 2
    tokens = len(crops) * 16 * 16
    assert row["heldout_tokens"] == tokens
    assert row["heldout_tokens_more"] == tokens + len(more) * 16 * 16
    assert row["used"] <= row["used_more"] <= row["K"]
    assert row["usage_more"] == pytest.approx(row["used_more"] / row["K"])


def test_more_heldout_photo_is_real_and_not_a_training_photo(quality):
    from vqforge.data.samples import SAMPLE_PHOTOS_TRAIN, _load

    (hopper,) = quality.heldout_photos(["grace_hopper"])
    assert hopper.shape == (600, 512, 3) and hopper.dtype.name == "uint8"
    assert hopper.std() > 20  # a photograph, not a blank
    # not any training photo (none has its shape; compare pixels where one does)
    for name in SAMPLE_PHOTOS_TRAIN:
        train = _load()[name]
        assert train.shape != hopper.shape or not (train == hopper).all()
    # 64x64 crops at shorter side 128 and 512 (its own size; never upsampled beyond it)
    crops = quality.heldout_crops([128, 512, 1024], names=["grace_hopper"])
    assert crops.shape == ((150 // 64) * 2 + (600 // 64) * (512 // 64), 3, 64, 64)
    assert crops.min() >= -1 and crops.max() <= 1
    with pytest.raises(ValueError, match="grace_hopper"):
        quality.heldout_photos(["lena"])


def test_chao1_counts_singletons_and_caps_at_k(quality):
    counts = torch.tensor([3, 1, 1, 2, 0, 0])
    est = quality.chao1(counts)
    assert (est["singletons"], est["doubletons"]) == (2, 1)
    assert est["chao1"] == 4 + 2 * 2 / (2 * 1)  # S + f1²/(2 f2)
    assert quality.chao1(torch.tensor([1, 1, 1, 0, 0]))["chao1"] == 5  # f2 = 0: S + f1(f1-1)/2 = 6, capped at K
    assert quality.chao1(torch.tensor([5, 4, 0]))["chao1"] == 2  # no singletons: every code in use has been seen


def test_override_reaches_only_the_rows_of_its_quantizer(quality, monkeypatch):
    monkeypatch.setattr(quality, "OVERRIDE", {"lfq_entropy_groups": 1, "lfq_batch_entropy_weight": 0.3})
    assert quality.case_config("lfq-16384", 2, "patch")["model"]["quantizer"]["lfq_entropy_groups"] == 1
    assert quality.case_config("lfq-16384", 2, "patch")["model"]["quantizer"]["lfq_batch_entropy_weight"] == 0.3
    assert "lfq_entropy_groups" not in quality.case_config("fsq-16384", 2, "patch")["model"]["quantizer"]


def test_counts_analysis_recovers_channel_distributions(tmp_path):
    import numpy as np

    spec = importlib.util.spec_from_file_location("bench_quality_counts", REPO / "bench" / "quality_counts.py")
    qc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qc)
    # FSQ [8, 8, 8]: channel 0 (least significant digit) always level 2, channel 1 uniform, channel 2 levels 0/1 only
    counts = np.zeros((8, 8, 8), dtype=np.int32)  # axes: channel 2, channel 1, channel 0
    counts[:2, :, 2] = 10
    np.savez_compressed(tmp_path / "fsq-512-step5.npz", counts=counts.reshape(-1))
    text = qc.analyse(tmp_path / "fsq-512-step5.npz")
    assert "usage 3.1%" in text  # 16 of 512 codes
    ch0, ch1, ch2 = text.split("(channel 0 first): ")[1].split("\n")[0].split(" | ")
    assert ch0.split() == ["0.00", "0.00", "1.00"] + ["0.00"] * 5
    assert ch1.split() == [f"{1 / 8:.2f}"] * 8
    assert ch2.split()[:2] == ["0.50", "0.50"] and ch2.split()[2:] == ["0.00"] * 6
    # the channels are independent here: the product of the marginals is the joint (16 codes of probability 1/16)
    assert "independent with these distributions: usage 3.1%, perplexity 16" in text
