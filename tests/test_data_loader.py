"""Training stream and validation loader: sharding, exact resume, workers, determinism, pseudo-videos, sample photos."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vqforge.config.schema import DataConfig
from vqforge.errors import ConfigError
from vqforge.data import (
    SAMPLE_PHOTO_ATTRIBUTION,
    SAMPLE_PHOTOS_TRAIN,
    SAMPLE_PHOTOS_VAL,
    ResumeWarning,
    ShardedBatchSampler,
    build_train_stream,
    build_val_loader,
    sample_photo_split,
)
from vqforge.data.synthetic import index_level, level_index, moving_frames, write_image, write_video
from vqforge.errors import DataError

N_IMAGES = 7


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """7 images of different sizes; the blue channel is flat index_level(i) (survives any crop or resize),
    red/green carry a pattern so that crops and flips change the pixels."""
    d = tmp_path_factory.mktemp("images")
    for i in range(N_IMAGES):
        h, w = 30 + 7 * i, 64 - 4 * i
        pattern = next(moving_frames(1, h, w, seed=i))
        pattern[:, :, 2] = index_level(i)
        write_image(d / f"img{i}.png", pattern)
    return d


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    for i in range(3):
        write_video(d / f"v{i}.mp4", moving_frames(20, 48, 64, seed=i), gop=6)
    return d


def _ids(batch: torch.Tensor) -> list[int]:
    """Image identity of frame 0 of each sample (blue channel)."""
    return [level_index(s[0, :, :, 2].double().mean()) for s in batch]


def _cfg(path: Path, **kw) -> DataConfig:
    base = dict(train=[str(path)], resolution=16, batch_size=1, hflip=True)
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_epoch_shares_every_sample_exactly_once(image_dir, world_size):
    per_epoch: list[list[int]] = [[], []]
    steps = []
    for rank in range(world_size):
        stream = build_train_stream(_cfg(image_dir), seed=5, rank=rank, world_size=world_size)
        n = stream.sampler.shard_size
        ids = [_ids(next(stream))[0] for _ in range(2 * n)]
        per_epoch[0] += ids[:n]
        per_epoch[1] += ids[n:]
        assert stream.sampler.locate(stream.batches * stream.batch_size) == (2, 0) and stream.epoch == 2
        steps.append(n)
    for ids in per_epoch:
        assert sorted(ids) == list(range(N_IMAGES))  # disjoint shards that cover everything
    assert sum(steps) == N_IMAGES and max(steps) - min(steps) <= 1
    if world_size == 1:
        assert per_epoch[0] != per_epoch[1]  # reshuffled every epoch


def test_sampler_without_shuffle_and_batches_across_epochs():
    s = ShardedBatchSampler(5, 3, seed=0, rank=1, world_size=2, shuffle=False)
    assert s.shard_size == 2  # positions 1 and 3
    assert [s.keys(b) for b in range(2)] == [[(0, 1), (0, 3), (1, 1)], [(1, 3), (2, 1), (2, 3)]]
    with pytest.raises(DataError, match="cannot be shared"):
        ShardedBatchSampler(2, 1, seed=0, rank=0, world_size=3, shuffle=True)


def _take(stream, n: int) -> list[torch.Tensor]:
    return [next(stream) for _ in range(n)]


def test_resume_continues_with_the_next_batch(image_dir):
    cfg = _cfg(image_dir, batch_size=3, resize=24)  # 7 samples, batches of 3: batches span epochs
    reference = _take(build_train_stream(cfg, seed=11), 7)
    stream = build_train_stream(cfg, seed=11)
    _take(stream, 4)
    state = json.loads(json.dumps(stream.state_dict()))  # a checkpoint holds it as JSON
    assert state["batches"] == 4 and state["epoch"] == 1 and state["skipped_files"] == 0
    resumed = build_train_stream(cfg, seed=11)
    resumed.load_state_dict(state)
    assert resumed.sampler.locate(resumed.batches * 3) == (1, 5)  # 12 samples = one epoch of 7 + 5
    for want, got in zip(reference[4:], _take(resumed, 3)):
        assert torch.equal(want, got)
    # and a different seed gives a different stream
    other = _take(build_train_stream(cfg, seed=12), 2)
    assert not all(torch.equal(a, b) for a, b in zip(reference, other))


def test_resume_under_changed_settings_warns(image_dir):
    stream = build_train_stream(_cfg(image_dir, batch_size=2), seed=0)
    _take(stream, 3)
    state = stream.state_dict()
    changed = build_train_stream(_cfg(image_dir, batch_size=3), seed=0)
    with pytest.warns(ResumeWarning, match="batch_size 2 -> 3"):
        changed.load_state_dict(state)
    assert changed.batches == 2  # 6 samples seen → 2 batches of 3


def test_workers_do_not_change_the_stream_or_the_global_rng(video_dir):
    cfg = DataConfig(train=[str(video_dir)], sequence_length=4, frame_stride=2, resolution=32, resize=40,
                     hflip=True, batch_size=3)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    rng_before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    single = build_train_stream(cfg, seed=2)
    a = _take(single, 3)
    state = single.state_dict()
    a += _take(single, 1)
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    assert np.array_equal(np.random.get_state()[1], rng_before[1]) and random.getstate() == rng_before[2]

    cfg.num_workers = 2
    multi = build_train_stream(cfg, seed=2)
    b = _take(multi, 2)
    multi.load_state_dict(state)  # jump (restarts the workers at batch 3)
    b += _take(multi, 1)
    multi.close()
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    for i, j in ((0, 0), (1, 1), (3, 2)):
        assert torch.equal(a[i], b[j])
    assert a[0].shape == (3, 4, 32, 32, 3)


def test_validation_is_deterministic_and_sharded_without_duplicates(image_dir):
    cfg = _cfg(image_dir, val=[str(image_dir)], val_batch_size=2, max_val_samples=5, num_workers=0)
    seen = []
    for rank in range(3):
        loader = build_val_loader(cfg, rank=rank, world_size=3)
        assert loader.total_samples == 5 and loader.num_samples == len(range(rank, 5, 3))
        first = list(loader)
        again = list(loader)
        assert len(first) == len(loader) and all(torch.equal(x, y) for x, y in zip(first, again))
        assert all(b.shape[0] <= 2 for b in first)
        seen += [i for b in first for i in _ids(b)]
    assert sorted(seen) == list(range(5))  # the first 5 files, once each
    rebuilt = list(build_val_loader(cfg))
    assert all(torch.equal(x, y) for x, y in zip(rebuilt, list(build_val_loader(cfg))))
    assert build_val_loader(_cfg(image_dir)) is None  # no validation data configured


def test_pseudo_videos_group_distinct_images(image_dir):
    cfg = _cfg(image_dir, use_images=True, sequence_length=3, batch_size=N_IMAGES, shuffle=False,
               val=[str(image_dir)], val_batch_size=N_IMAGES)
    batch = next(build_train_stream(cfg, seed=1))
    assert batch.shape == (N_IMAGES, 3, 16, 16, 3)
    groups = [[level_index(f[:, :, 2].double().mean()) for f in s] for s in batch]
    assert [g[0] for g in groups] == list(range(N_IMAGES))  # each image anchors one sample per epoch
    assert all(len(set(g)) == 3 for g in groups)
    assert torch.equal(batch, next(build_train_stream(cfg, seed=1)))
    assert not torch.equal(batch, next(build_train_stream(cfg, seed=2)))
    (val,) = list(build_val_loader(cfg))
    assert [[level_index(f[:, :, 2].double().mean()) for f in s] for s in val] == [
        [i, (i + 1) % N_IMAGES, (i + 2) % N_IMAGES] for i in range(N_IMAGES)]


def test_sample_photos_split_and_stream():
    train, val = sample_photo_split()
    assert len(train) == len(SAMPLE_PHOTOS_TRAIN) == 10 and len(SAMPLE_PHOTOS_VAL) == 2
    for a in train:
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 256
    # validation: the 2x2 tiles of each held-out photo, row-major, exactly covering its top-left even part
    import skimage.data as skd

    assert len(val) == 8 and all(a.dtype == np.uint8 and a.shape[2] == 3 and min(a.shape[:2]) >= 128 for a in val)
    coffee = skd.coffee()
    h, w = coffee.shape[0] // 2, coffee.shape[1] // 2
    assert np.array_equal(np.concatenate([np.concatenate(val[0:2], 1), np.concatenate(val[2:4], 1)], 0),
                          coffee[:2 * h, :2 * w])
    assert not any(np.array_equal(val[i], val[j]) for i in range(8) for j in range(i))
    camera = train[SAMPLE_PHOTOS_TRAIN.index("camera")]
    assert np.array_equal(camera[..., 0], camera[..., 1])  # grayscale repeated into RGB
    assert not set(SAMPLE_PHOTOS_TRAIN) & set(SAMPLE_PHOTOS_VAL)  # split by photo
    assert not any(t.shape == v.shape and np.array_equal(t, v) for t in train for v in val)
    for name in SAMPLE_PHOTOS_TRAIN + SAMPLE_PHOTOS_VAL:
        assert name in SAMPLE_PHOTO_ATTRIBUTION
    assert "public domain" in SAMPLE_PHOTO_ATTRIBUTION and "CC0" in SAMPLE_PHOTO_ATTRIBUTION

    cfg = DataConfig(source="sample_photos", resolution=32, batch_size=4)
    stream = build_train_stream(cfg, seed=0)
    batches = _take(stream, 5)  # 20 samples: two epochs of 10 photos
    assert stream.epoch == 2 and all(b.shape == (4, 1, 32, 32, 3) for b in batches)
    (v,) = list(build_val_loader(DataConfig(source="sample_photos", resolution=32, val_batch_size=8)))
    assert v.shape == (8, 1, 32, 32, 3)


def test_sample_val_tiles_reach_the_validation_set():
    """data.sample_val_tiles: n x n tiles of each held-out photo, each one validation image, row-major, named."""
    import skimage.data as skd

    _, val = sample_photo_split(None, 4)
    coffee = skd.coffee()
    h, w = coffee.shape[0] // 4, coffee.shape[1] // 4
    assert len(val) == 32 and all(a.shape[:2] in ((h, w), (skd.chelsea().shape[0] // 4, skd.chelsea().shape[1] // 4))
                                  for a in val)
    assert np.array_equal(np.concatenate([np.concatenate(val[r * 4:(r + 1) * 4], 1) for r in range(4)], 0),
                          coffee[:4 * h, :4 * w])
    cfg = DataConfig(source="sample_photos", resolution=32, resize=32, val_batch_size=64, sample_val_tiles=4)
    (v,) = list(build_val_loader(cfg))
    assert v.shape == (32, 1, 32, 32, 3)
    from vqforge.data.loader import _build_dataset

    ds, _ = _build_dataset(cfg, "val", seed=0)
    assert [it.name for it in ds.items][:2] == ["skimage.data.coffee tile 1/16", "skimage.data.coffee tile 2/16"]
    with pytest.raises(ConfigError, match="sample_val_tiles"):
        DataConfig(source="sample_photos", sample_val_tiles=0).check("data")
    # more tiles than chelsea (300 pixels high) has rows would be empty: refused, naming the largest count
    with pytest.raises(ConfigError, match=r"sample_val_tiles: 301 x 301 tiles .* are empty\n.*use at most 300"):
        list(build_val_loader(DataConfig(source="sample_photos", resolution=32, sample_val_tiles=301)))


def test_crop_flip_resize_and_shuffle_switches_reach_the_samples(image_dir):
    from PIL import Image

    from vqforge.data import resize_crop
    from vqforge.data.transforms import CENTER

    def centre(i: int, short: int) -> np.ndarray:
        return resize_crop(Image.open(image_dir / f"img{i}.png").convert("RGB"), short, 16, CENTER)

    fixed = dict(random_crop=False, hflip=False, shuffle=False, batch_size=N_IMAGES)
    a = next(build_train_stream(_cfg(image_dir, **fixed), seed=0))
    assert torch.equal(a, next(build_train_stream(_cfg(image_dir, **fixed), seed=1)))  # nothing random left
    assert _ids(a) == list(range(N_IMAGES))  # shuffle: false keeps file order
    for i in range(N_IMAGES):
        assert np.array_equal(a[i, 0].numpy(), centre(i, 16))

    zoomed = next(build_train_stream(_cfg(image_dir, **fixed, resize=32), seed=0))
    for i in range(N_IMAGES):
        assert np.array_equal(zoomed[i, 0].numpy(), centre(i, 32))  # shorter side 32, then the centre 16×16

    flipped = next(build_train_stream(_cfg(image_dir, **{**fixed, "hflip": True}), seed=0))
    kinds = set()
    for i in range(N_IMAGES):
        if torch.equal(flipped[i], a[i]):
            kinds.add("as is")
        elif torch.equal(flipped[i], a[i].flip(2)):  # (D, H, W, C): W is dim 2
            kinds.add("mirrored")
    assert kinds == {"as is", "mirrored"}

    moved = next(build_train_stream(_cfg(image_dir, **{**fixed, "random_crop": True}), seed=0))
    assert not torch.equal(moved, a) and _ids(moved) == _ids(a)  # same images, other crops


def test_validation_alone_needs_no_training_data(image_dir):
    from vqforge.errors import ConfigError

    loader = build_val_loader(DataConfig(val=[str(image_dir)], resolution=16, val_batch_size=N_IMAGES))
    (batch,) = list(loader)
    assert _ids(batch) == list(range(N_IMAGES))
    with pytest.raises(ConfigError, match="data.train"):
        build_train_stream(DataConfig(val=[str(image_dir)], resolution=16), seed=0)


def test_sample_photos_subset_is_what_training_sees():
    """data.sample_photos picks the training photos; the stream draws from those and no others."""
    import skimage.data as skd

    names = ["astronaut", "retina"]
    train, val = sample_photo_split(names)
    assert len(train) == 2 and np.array_equal(train[0], skd.astronaut()) and len(val) == 8
    cfg = DataConfig(source="sample_photos", sample_photos=names, resolution=32, resize=32, random_crop=False,
                     batch_size=4, shuffle=False)
    batch = next(iter(build_train_stream(cfg, seed=0)))
    # every sample is the centre crop of one of the two photos resized to 32: compare against both
    full = DataConfig(source="sample_photos", resolution=32, resize=32, random_crop=False, batch_size=10,
                      shuffle=False)
    every = next(iter(build_train_stream(full, seed=0)))  # all 10 training photos, in list order
    picks = [SAMPLE_PHOTOS_TRAIN.index(n) for n in names]
    for s in batch:
        assert any(torch.equal(s, every[i]) for i in picks)
        assert not any(torch.equal(s, every[i]) for i in range(10) if i not in picks)


@pytest.mark.parametrize("names,fragment", [(["coffee"], "held-out"), (["lena"], "unknown"), ([], "is empty"),
                                            (["rocket", "rocket"], "twice")])
def test_bad_sample_photos_are_config_errors(names, fragment):
    with pytest.raises(ConfigError) as e:
        DataConfig(source="sample_photos", sample_photos=names).check("data")
    assert "data.sample_photos" in str(e.value) and fragment in str(e.value)
