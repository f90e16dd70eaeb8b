"""Loaders the trainer uses: an infinite, resumable, sharded training stream and a finite validation loader.

Training stream. Epoch e visits every sample once in the order `epoch_order(N, seed, e)` (a seeded permutation, or
0..N−1 with `shuffle: false`), the same on every rank. Rank r of W takes positions r, r + W, r + 2W, ... of that
order, so the shards are disjoint and together hold every sample exactly once per epoch (nothing dropped, nothing
padded). Each rank strings its shards of epochs 0, 1, 2, ... into one endless sequence and cuts it into batches of
`batch_size`; a batch may span two epochs. Every rank therefore yields a full batch at every step, which DDP needs.
When N is not a multiple of W the shards differ by one sample, so ranks cross epoch boundaries at slightly
different steps.

Resume. The stream's position is the number of batches it has handed out. `state_dict()` stores it (plus what it
was computed for); `load_state_dict()` rebuilds the sampler at that batch (epoch = (batches · B) // shard size) —
no batch is replayed. Because every random choice is a function of (seed, epoch, sample index), the next batch is
exactly the one that would have come next. The state does not depend on the rank, so rank 0's copy serves all
ranks.

Validation loader. The first `max_val_samples` samples in file order (all if null); rank r takes samples r, r + W,
...; no duplicates and no padding, so ranks may differ by one sample (and then by one batch). Metric code should sum
values and counts per rank and all-reduce once after the loop, never per batch. `build_val_loader` returns None when
no validation data is configured.
"""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config.schema import DataConfig
from ..errors import ConfigError, DataError
from .dataset import ClipDataset, FailureLog, Item, SampleSpec, collate, epoch_order, index_files
from .samples import SAMPLE_PHOTOS_TRAIN, sample_photo_split, sample_photo_val_names
from .sources import media_kind, resolve_sources

log = logging.getLogger("vqforge.data")

STATE_VERSION = 1


class ResumeWarning(UserWarning):
    """A data position was restored under different settings, so the stream cannot continue exactly."""


# --- config-time checks ------------------------------------------------------------------------------------------


@dataclass
class DataSources:
    train: list[Path]
    val: list[Path]


def _check_kinds(cfg: DataConfig, paths: list[Path], field: str) -> None:
    images = [p for p in paths if media_kind(p) == "image"]
    videos = [p for p in paths if media_kind(p) == "video"]
    if cfg.use_images and videos:
        raise ConfigError("data.use_images", f"is true, but {field} lists video files (e.g. {str(videos[0])!r}); "
                          "pseudo-videos are built from images only",
                          "set use_images: false to train on video clips, or list only image files")
    if not cfg.use_images and cfg.sequence_length > 1 and images:
        raise ConfigError("data.sequence_length", f"is {cfg.sequence_length}, but {field} lists images "
                          f"(e.g. {str(images[0])!r}) and use_images is false, so they cannot form clips",
                          "set use_images: true to group images into pseudo-videos, or sequence_length: 1")


def _check_sample_photos(cfg: DataConfig) -> None:
    if not cfg.use_images and cfg.sequence_length > 1:
        raise ConfigError("data.sequence_length", f"is {cfg.sequence_length}, but the sample photos are "
                          "single images and use_images is false",
                          "set use_images: true to group photos into pseudo-videos, or sequence_length: 1")


def _resolve_split(cfg: DataConfig, split: str) -> list[Path]:
    """Checked file list of one split ([] for sample photos, or for an empty validation list)."""
    if cfg.source == "sample_photos":
        _check_sample_photos(cfg)
        return []
    entries = cfg.train if split == "train" else cfg.val
    if not entries:
        return []
    paths = shard_slice(resolve_sources(entries, f"data.{split}"), cfg.shard_id, cfg.num_shards)
    _check_kinds(cfg, paths, f"data.{split}")
    return paths


def shard_slice(paths: list[Path], shard_id: int, num_shards: int) -> list[Path]:
    """The shard_id-th of num_shards contiguous slices of `paths` (data.shard_id / data.num_shards).

    Each slice has len // num_shards files and the last one also takes the remainder, as in the previous system's
    data pipeline. A slice without files is a ConfigError (the previous system would have trained on nothing).
    """
    if num_shards <= 1:
        return paths
    per = len(paths) // num_shards
    start = shard_id * per
    end = start + per if shard_id < num_shards - 1 else len(paths)
    if end <= start:
        raise ConfigError("data.shard_id", f"shard {shard_id} of {num_shards} is empty: the list has only "
                          f"{len(paths)} files", "use fewer shards (data.num_shards) or give more files")
    return paths[start:end]


def check_data_config(cfg: DataConfig) -> DataSources:
    """Config-time validation of the data section: paths exist, globs match, image/video/use_images agree.

    Reads no file contents (that happens when the loaders are built). Raises ConfigError naming the field and fix.
    Whether training data is required at all is `DataConfig.check_training_data`'s business.
    """
    cfg.check("data")
    return DataSources(_resolve_split(cfg, "train"), _resolve_split(cfg, "val"))


def _spec(cfg: DataConfig) -> SampleSpec:
    return SampleSpec(
        sequence_length=cfg.sequence_length,
        frame_stride=cfg.frame_stride,
        resolution=cfg.resolution,
        short_side=cfg.resize if cfg.resize is not None else cfg.resolution,
        short_side_range=tuple(cfg.resize_range) if cfg.resize_range is not None else None,
        random_crop=cfg.random_crop,
        hflip=cfg.hflip,
        pseudo_video=cfg.use_images,
    )


def _build_dataset(cfg: DataConfig, split: str, seed: int) -> tuple[ClipDataset, FailureLog] | None:
    field = f"data.{split}"
    train = split == "train"
    cfg.check("data")
    if train:
        cfg.check_training_data("data")  # the validation loader alone (evaluation) needs no training data
    paths = _resolve_split(cfg, split)
    spec = _spec(cfg)
    if cfg.source == "sample_photos":
        train_imgs, val_imgs = sample_photo_split()
        arrays = train_imgs if train else val_imgs
        names = SAMPLE_PHOTOS_TRAIN if train else sample_photo_val_names()
        items = [Item("array", f"skimage.data.{n}", 1) for n in names]
        skipped: list[tuple[str, str]] = []
        ds = ClipDataset(items, spec, train=train, seed=seed, arrays=list(arrays), field=field)
    else:
        if not paths:
            return None
        items, skipped = index_files(paths, spec, field)
        ds = ClipDataset(items, spec, train=train, seed=seed, field=field)
    failures = FailureLog(field, skipped)
    ds.first_readable(failures)
    kinds = {k: sum(it.kind == k for it in ds.items) for k in ("image", "video", "array")}
    log.info("%s: %d samples (%d videos, %d images, %d sample photos), %d files skipped", field, len(ds),
             kinds["video"], kinds["image"], kinds["array"], failures.count)
    return ds, failures


# --- DataLoader plumbing -----------------------------------------------------------------------------------------


def _seed_worker(worker_id: int) -> None:
    # Sample randomness never comes from these generators; seeding them keeps any library that does use
    # numpy's or Python's global RNG inside a worker reproducible.
    info = torch.utils.data.get_worker_info()
    s = info.seed % 2**32 if info is not None else worker_id
    np.random.seed(s)
    random.seed(s)


def _loader_generator(seed: int, salt: int) -> torch.Generator:
    # DataLoader draws its workers' base seed from this generator; without one it would draw from torch's global
    # RNG, and starting a loader (e.g. after a resume) would shift the trainer's random numbers.
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % 2**63)


def _pin(pin_memory: bool | None) -> bool:
    return torch.cuda.is_available() if pin_memory is None else pin_memory


class ShardedBatchSampler:
    """Endless batches of (epoch, index) keys for one rank (see the module docstring for the scheme)."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int, world_size: int, shuffle: bool,
                 start_batch: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if num_samples < world_size:
            raise DataError(f"data.train: {num_samples} training samples cannot be shared among {world_size} "
                            "processes (each needs at least one)\n  fix: add data or run fewer processes")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.start_batch = start_batch
        self.shard_size = len(range(rank, num_samples, world_size))
        self._order_epoch = -1
        self._order = np.arange(0)

    def locate(self, sample_position: int) -> tuple[int, int]:
        """(epoch, position within this rank's shard of that epoch) of the rank's n-th sample."""
        return divmod(sample_position, self.shard_size)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
            self._order_epoch = epoch
        return self._order

    def keys(self, batch: int) -> list[tuple[int, int]]:
        out = []
        for p in range(batch * self.batch_size, (batch + 1) * self.batch_size):
            epoch, offset = self.locate(p)
            out.append((epoch, int(self._order_for(epoch)[self.rank + offset * self.world_size])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            yield self.keys(b)
            b += 1


# --- training stream ---------------------------------------------------------------------------------------------


class TrainStream:
    """Infinite iterator of (B, D, H, W, C) uint8 training batches with a resumable position.

    `state_dict()` / `load_state_dict()` save and restore the position (JSON-serialisable ints and strings);
    `skipped_files` counts files skipped so far (when indexing and while reading).
    """

    def __init__(self, dataset: ClipDataset, failures: FailureLog, *, batch_size: int, seed: int, rank: int,
                 world_size: int, shuffle: bool, num_workers: int, pin_memory: bool | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_workers = num_workers
        self.pin_memory = _pin(pin_memory)
        self._failures = failures
        self._sampler = ShardedBatchSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size,
                                            shuffle=shuffle)
        self._batches = 0  # batches handed to the caller (prefetched ones do not count)
        self._loader: DataLoader | None = None
        self._it: Iterator | None = None

    # position
    @property
    def batches(self) -> int:
        return self._batches

    @property
    def num_samples(self) -> int:
        """Samples in one epoch, over all ranks."""
        return len(self.dataset)

    @property
    def samples_per_epoch(self) -> int:
        """This rank's share of an epoch."""
        return self._sampler.shard_size

    @property
    def epoch(self) -> int:
        """Epoch of the next sample this rank will yield."""
        return self._sampler.locate(self._batches * self.batch_size)[0]

    @property
    def position(self) -> int:
        """Position of the next sample within this rank's shard of `epoch`."""
        return self._sampler.locate(self._batches * self.batch_size)[1]

    @property
    def skipped_files(self) -> int:
        return self._failures.count

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) for every skipped file."""
        return list(self._failures.skipped)

    # iteration
    def _start(self) -> None:
        sampler = ShardedBatchSampler(len(self.dataset), self.batch_size, seed=self.seed, rank=self.rank,
                                      world_size=self.world_size, shuffle=self.shuffle, start_batch=self._batches)
        workers = self.num_workers
        self._loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            worker_init_fn=_seed_worker if workers > 0 else None,
            generator=_loader_generator(self.seed, self._batches),
        )
        self._it = iter(self._loader)

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._start()
        assert self._it is not None
        batch, failures = next(self._it)
        self._batches += 1
        if failures:
            self._failures.record(failures)
        return batch  # (B, D, H, W, C) uint8

    def close(self) -> None:
        """Stop worker processes (they restart on the next batch)."""
        it, self._it, self._loader = self._it, None, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    # checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "batches": self._batches,
            "seed": int(self.seed),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "num_samples": len(self.dataset),
            "shuffle": int(self.shuffle),
            "epoch": self.epoch,  # informational (this rank); `batches` is what is restored
            "skipped_files": self.skipped_files,
            "skipped_names": "\n".join(self._failures.names()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the last batch handed out when `state` was saved."""
        if not isinstance(state, dict) or "batches" not in state:
            raise DataError("the checkpoint's data position is not a vqforge data state (no 'batches' entry)\n"
                            "  fix: resume from a checkpoint written by vqforge's trainer")
        if int(state.get("version", -1)) != STATE_VERSION:
            raise DataError(f"data position has version {state.get('version')!r}, expected {STATE_VERSION}\n"
                            "  fix: resume with the vqforge version that wrote the checkpoint")
        batches = int(state["batches"])
        changed = [f"{k} {state[k]} -> {now}" for k, now in
                   (("seed", int(self.seed)), ("batch_size", self.batch_size), ("world_size", self.world_size),
                    ("num_samples", len(self.dataset)), ("shuffle", int(self.shuffle)))
                   if k in state and int(state[k]) != now]
        if changed:
            old_b = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", self.world_size))
            batches = (batches * old_b) // (self.batch_size * self.world_size)  # about the same number of samples
            warnings.warn("training data resumed under changed settings (" + ", ".join(changed) + "); the stream "
                          "continues near the same point but not with exactly the batches it would have given",
                          ResumeWarning, stacklevel=2)
        self.close()
        self._batches = batches
        self._failures.restore(str(state.get("skipped_names", "")).split("\n"))


def build_train_stream(cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1, *,
                       pin_memory: bool | None = None) -> TrainStream:
    """The training stream for this rank: endless (B, D, H, W, C) uint8 batches, B = cfg.batch_size.

    Probes all training files first (see vqforge.data.dataset); raises ConfigError for bad paths and DataError
    when nothing is readable. pin_memory: None = when CUDA is available.
    """
    built = _build_dataset(cfg, "train", seed)
    assert built is not None  # cfg.check requires training data
    ds, failures = built
    return TrainStream(ds, failures, batch_size=cfg.batch_size, seed=seed, rank=rank, world_size=world_size,
                       shuffle=cfg.shuffle, num_workers=cfg.num_workers, pin_memory=pin_memory)


# --- validation --------------------------------------------------------------------------------------------------


class ValLoader:
    """Finite, deterministic validation batches (B, D, H, W, C) uint8 for one rank; iterate it any number of times."""

    def __init__(self, dataset: ClipDataset, failures: FailureLog, indices: list[int], *, batch_size: int,
                 num_workers: int, total_samples: int, pin_memory: bool | None = None):
        self.dataset = dataset
        self.indices = indices
        self.batch_size = batch_size
        self.total_samples = total_samples  # over all ranks, after max_val_samples
        self._failures = failures
        self._loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=indices,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=_pin(pin_memory),
            persistent_workers=num_workers > 0 and len(indices) > 0,
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            generator=_loader_generator(0, 1),
        )

    @property
    def num_samples(self) -> int:
        """Samples on this rank (before any dropped unreadable ones)."""
        return len(self.indices)

    @property
    def skipped_files(self) -> int:
        return self._failures.count

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(self._failures.skipped)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch, failures in self._loader:
            if failures:
                self._failures.record(failures)
            if batch is not None:
                yield batch  # (B, D, H, W, C) uint8


def build_val_loader(cfg: DataConfig, rank: int = 0, world_size: int = 1, *,
                     pin_memory: bool | None = None) -> ValLoader | None:
    """This rank's validation loader, or None when no validation data is configured (data.val empty)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    built = _build_dataset(cfg, "val", 0)
    if built is None:
        return None
    ds, failures = built
    total = len(ds) if cfg.max_val_samples is None else min(len(ds), cfg.max_val_samples)
    indices = list(range(rank, total, world_size))
    batch_size = cfg.val_batch_size if cfg.val_batch_size is not None else cfg.batch_size
    return ValLoader(ds, failures, indices, batch_size=batch_size, num_workers=cfg.num_workers, total_samples=total,
                     pin_memory=pin_memory)
