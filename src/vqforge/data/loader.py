"""Loaders the trainer uses: an infinite, resumable, sharded training stream and a finite validation loader.

Training stream. The batch order is `vqforge.data.sampler.ShardedBatchSampler`: every epoch is a seeded
permutation shared by all ranks, rank r of W takes every W-th sample of it, and each rank cuts its endless sequence
of shards into batches (a batch may span two epochs). Every rank therefore yields a full batch at every step, which
DDP needs.
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
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config.schema import DataConfig
from ..errors import DataError
from .dataset import ClipDataset, FailureLog, Item, SampleSpec, collate, index_files
from .sampler import ShardedBatchSampler
from .samples import SAMPLE_PHOTOS_TRAIN, sample_photo_split, sample_photo_val_names
from .sources import resolve_split

log = logging.getLogger("vqforge.data")

STATE_VERSION = 1


class ResumeWarning(UserWarning):
    """A data position was restored under different settings, so the stream cannot continue exactly."""


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
    paths = resolve_split(cfg, split)
    spec = _spec(cfg)
    if cfg.source == "sample_photos":
        train_imgs, val_imgs = sample_photo_split(cfg.sample_photos, cfg.sample_val_tiles)
        arrays = train_imgs if train else val_imgs
        names = (cfg.sample_photos or SAMPLE_PHOTOS_TRAIN) if train else sample_photo_val_names(cfg.sample_val_tiles)
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


def _data_loader(dataset: ClipDataset, *, num_workers: int, pin_memory: bool, persistent: bool,
                 generator: torch.Generator, **order: Any) -> DataLoader:
    """A DataLoader over `dataset` with vqforge's collate and worker seeding; `order`: its sampler arguments."""
    return DataLoader(dataset, num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=persistent and num_workers > 0,
                      worker_init_fn=_seed_worker if num_workers > 0 else None, generator=generator, **order)


class _SkippedFiles:
    """What a loader reading through a FailureLog reports about unreadable files."""

    _failures: FailureLog

    @property
    def skipped_files(self) -> int:
        """Files skipped so far (when indexing and while reading)."""
        return self._failures.count

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) for every skipped file."""
        return list(self._failures.skipped)


# --- training stream ---------------------------------------------------------------------------------------------


class TrainStream(_SkippedFiles):
    """Infinite iterator of (B, D, H, W, C) uint8 training batches with a resumable position.

    `state_dict()` / `load_state_dict()` save and restore the position (JSON-serialisable ints and strings);
    `skipped_files` counts files skipped so far (when indexing and while reading). `sampler` is this rank's batch
    order (`sampler.shard_size`: its samples per epoch; `sampler.locate`: where a sample position falls).
    """

    def __init__(self, dataset: ClipDataset, failures: FailureLog, *, batch_size: int, seed: int, rank: int,
                 world_size: int, shuffle: bool, num_workers: int, pin_memory: bool | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_workers = num_workers
        self.pin_memory = _pin(pin_memory)
        self._failures = failures
        self.sampler = ShardedBatchSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size,
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
    def epoch(self) -> int:
        """Epoch of the next sample this rank will yield."""
        return self.sampler.locate(self._batches * self.batch_size)[0]

    # iteration
    def _start(self) -> None:
        self.sampler.start_batch = self._batches  # the loader's iteration starts here
        self._loader = _data_loader(self.dataset, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                    persistent=True, generator=_loader_generator(self.seed, self._batches),
                                    batch_sampler=self.sampler)
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


class ValLoader(_SkippedFiles):
    """Finite, deterministic validation batches (B, D, H, W, C) uint8 for one rank; iterate it any number of times."""

    def __init__(self, dataset: ClipDataset, failures: FailureLog, indices: list[int], *, batch_size: int,
                 num_workers: int, total_samples: int, pin_memory: bool | None = None):
        self.dataset = dataset
        self.indices = indices
        self.batch_size = batch_size
        self.total_samples = total_samples  # over all ranks, after max_val_samples
        self._failures = failures
        self._loader = _data_loader(dataset, num_workers=num_workers, pin_memory=_pin(pin_memory),
                                    persistent=len(indices) > 0, generator=_loader_generator(0, 1),
                                    batch_size=batch_size, sampler=indices)

    @property
    def num_samples(self) -> int:
        """Samples on this rank (before any dropped unreadable ones)."""
        return len(self.indices)

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
