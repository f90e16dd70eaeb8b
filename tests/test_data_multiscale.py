"""Multi-scale training crops (data.resize_range): the shorter side is drawn per sample, validation keeps `resize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqforge.config import from_dict
from vqforge.config.schema import Config, DataConfig
from vqforge.data import build_train_stream, build_val_loader, resize_crop
from vqforge.data.dataset import draw_short_side
from vqforge.data.synthetic import moving_frames, write_image
from vqforge.data.transforms import CENTER
from vqforge.errors import ConfigError

N = 5


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ms_images")
    for i in range(N):
        write_image(d / f"img{i}.png", next(moving_frames(1, 40 + 5 * i, 56, seed=10 + i)))
    return d


def _cfg(path: Path, **kw) -> DataConfig:
    base = dict(train=[str(path)], val=[str(path)], resolution=16, batch_size=N, val_batch_size=N,
                random_crop=False, hflip=False, shuffle=False)
    base.update(kw)
    return DataConfig(**base)


def _centre(path: Path, i: int, short: int) -> np.ndarray:
    return resize_crop(Image.open(path / f"img{i}.png").convert("RGB"), short, 16, CENTER)


def test_a_one_point_range_is_a_fixed_resize_and_leaves_crops_and_flips_alone(image_dir):
    for extra in (dict(), dict(random_crop=True, hflip=True, shuffle=True)):
        fixed = build_train_stream(_cfg(image_dir, resize=24, **extra), seed=3)
        ranged = build_train_stream(_cfg(image_dir, resize=24, resize_range=[24, 24], **extra), seed=3)
        for _ in range(2):
            assert torch.equal(next(fixed), next(ranged))


def test_each_training_sample_gets_its_own_scale_and_validation_keeps_resize(image_dir):
    cfg = _cfg(image_dir, resize=20, resize_range=[16, 64])
    stream = build_train_stream(cfg, seed=0)
    scales = []
    for _ in range(4):  # 4 epochs, files in order (shuffle off)
        batch = next(stream)
        for i in range(N):
            got = batch[i, 0].numpy()
            match = [s for s in range(16, 65) if np.array_equal(got, _centre(image_dir, i, s))]
            assert match, f"sample {i} is no centre crop of any shorter side in [16, 64]"
            scales.append(match[0])
    assert len(set(scales)) >= 6 and min(scales) < 32 < max(scales)  # scales vary across samples and epochs
    again = build_train_stream(cfg, seed=0)
    assert torch.equal(next(again), next(build_train_stream(cfg, seed=0)))  # deterministic per (seed, epoch, index)
    assert not torch.equal(next(build_train_stream(cfg, seed=1)), next(build_train_stream(cfg, seed=0)))

    (val,) = list(build_val_loader(cfg))
    for i in range(N):
        assert np.array_equal(val[i, 0].numpy(), _centre(image_dir, i, 20))  # validation: data.resize, no range


def test_scales_are_log_uniform_and_inclusive():
    rng = np.random.default_rng(0)
    draws = np.array([draw_short_side((64, 256), rng) for _ in range(20000)])
    assert draws.min() == 64 and draws.max() == 256
    # log-uniform: half of the draws below the geometric midpoint 128 (uniform would give a third)
    assert abs((draws < 128).mean() - 0.5) < 0.02
    assert draw_short_side(None, rng) is None and draw_short_side((40, 40), rng) == 40


@pytest.mark.parametrize("rr, match", [([8, 64], "smaller than the crop size"), ([64, 32], "smaller than lo"),
                                       ([64], "two integers"), ([16.5, 32], "two integers")])
def test_bad_ranges_are_config_errors(rr, match):
    with pytest.raises(ConfigError, match=match) as e:
        DataConfig(resolution=16, resize_range=rr).check("data")
    assert "data.resize_range" in str(e.value)


def test_the_field_parses_from_a_native_config():
    cfg = from_dict(Config, {"data": {"source": "sample_photos", "resolution": 32, "resize_range": [32, 96]}})
    assert cfg.data.resize_range == [32, 96]
