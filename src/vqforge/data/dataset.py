"""What one sample is, how it is read, and what happens to files that cannot be read.

A sample is D = sequence_length frames of `resolution`×`resolution` RGB, uint8 (D, H, W, 3):
- video item: D frames start, start + frame_stride, ... of one video;
- image item (D = 1): the image;
- pseudo-video (`use_images: true`): the item's image followed by D − 1 other images of the set.

Randomness. Every random choice for training sample `index` in epoch `epoch` comes from one numpy Generator seeded
with (seed, epoch, index): crop position, flip, clip start, the pseudo-video's other images, and the replacement
order for files that fail. Nothing reads the global RNGs or depends on which worker loads the sample, so the stream
is the same with any number of workers and after a resume at any batch.

Validation is deterministic without randomness: centre crop, no flip, the clip in the middle of each video
(start = (num_frames − span) // 2), and pseudo-videos of consecutive images (index, index + 1, ... cyclically).

Bad files. Files are probed when the dataset is built (headers only: image size, video stream and frame count);
unsupported, empty, unreadable files and videos shorter than the clip span (sequence_length − 1) · frame_stride + 1
are skipped there with a `BadFileWarning` naming the file. Short videos are skipped, not looped or padded. Damage
only visible when decoding (a truncated JPEG, a broken video stream) is found when the sample is read: in training
the file is replaced by the next candidate of the sample's seeded replacement order, so batches stay full and
deterministic; in validation the sample is dropped (its batch is one shorter). A video that ends before its
header says (truncated, or an estimated frame count) is not skipped: its clips move back to end at the last frame
that decodes. Each file is warned about once and counted in `skipped_files`. If no file of a source can be read, a
`DataError` names the files that were tried; this is checked when the loader is built, by decoding the first
readable sample, so it happens before training starts.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .images import PIL_ERRORS, array_to_image, load_image, probe_image
from .sources import media_kind
from .transforms import CENTER, CropParams, draw_crop_params, resize_crop
from .video import MediaError, clip_span, probe_video, read_clip

# Everything that means "this file cannot be used" (as opposed to a bug, which should surface).
MEDIA_ERRORS = (MediaError, av.FFmpegError, MemoryError) + PIL_ERRORS

# tags that separate the independent random streams derived from (seed, epoch, index)
_TAG_SAMPLE, _TAG_REPLACE, _TAG_SHUFFLE, _TAG_SCALE = 1, 2, 3, 4

_MAX_INDIVIDUAL_WARNINGS = 20  # per index pass; the rest are summarised (all are in `skipped`)


class BadFileWarning(UserWarning):
    """A data file was skipped (the message names it and says why)."""


def seeded_rng(seed: int, epoch: int, index: int, tag: int) -> np.random.Generator:
    """An independent Generator for (seed, epoch, index, tag); negative seeds are mapped into uint64."""
    return np.random.default_rng([seed % 2**64, epoch, index, tag])


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of sample indices in `epoch` (the same on every rank)."""
    if not shuffle:
        return np.arange(num_samples)
    return seeded_rng(seed, epoch, 0, _TAG_SHUFFLE).permutation(num_samples)


@dataclass(frozen=True)
class Item:
    kind: Literal["image", "video", "array"]
    name: str  # file path, or "skimage.data.<photo>" for sample photos
    num_frames: int = 1


@dataclass(frozen=True)
class SampleSpec:
    """The DataConfig fields that shape a sample."""

    sequence_length: int
    frame_stride: int
    resolution: int
    short_side: int  # shorter side before cropping (DataConfig.resize, or resolution)
    random_crop: bool
    hflip: bool
    pseudo_video: bool  # use_images
    # training only: (lo, hi) multi-scale crops, the shorter side drawn log-uniformly per sample (DataConfig.resize_range)
    short_side_range: tuple[int, int] | None = None

    @property
    def span(self) -> int:
        return clip_span(self.sequence_length, self.frame_stride)


def draw_short_side(short_side_range: tuple[int, int] | None, rng: np.random.Generator) -> int | None:
    """Multi-scale crops: a shorter side drawn log-uniformly in [lo, hi] (inclusive), or None without a range.

    Log-uniform, so each octave of scale is equally likely: a crop is as often a close-up as a wide view.
    Drawn from its own random stream, so turning multi-scale on leaves crop positions, flips and clip starts as they were.
    """
    if short_side_range is None:
        return None
    lo, hi = short_side_range
    if lo == hi:
        return lo
    v = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
    return min(max(int(v), lo), hi)


@dataclass
class LoadedSample:
    frames: np.ndarray | None  # (D, H, W, 3) uint8; None = validation sample dropped
    failures: list[tuple[str, str]]  # (file, reason) for files that failed while reading this sample


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, MediaError) else f"{type(e).__name__}: {e}"


def probe_file(path: Path, spec: SampleSpec) -> Item:
    """Check a file's header and return its Item; MediaError says why it cannot be used."""
    kind = media_kind(path)
    if kind is None:
        raise MediaError(f"unsupported file type {path.suffix or '(no extension)'!r} (not an image or video "
                         "extension vqforge reads)")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise MediaError(f"cannot be read ({e})") from e
    if size == 0:
        raise MediaError("is empty (0 bytes)")
    if kind == "image":
        probe_image(path)
        return Item("image", str(path), 1)
    info = probe_video(path)
    if info.num_frames < spec.span:
        raise MediaError(f"video is too short: {info.num_frames} frames, a clip needs {spec.span} "
                         f"(sequence_length {spec.sequence_length}, frame_stride {spec.frame_stride})")
    return Item("video", str(path), info.num_frames)


def _probe_or_reason(path: Path, spec: SampleSpec) -> Item | tuple[str, str]:
    try:
        return probe_file(path, spec)
    except MEDIA_ERRORS as e:
        return (str(path), _reason(e))


def index_files(paths: list[Path], spec: SampleSpec, field: str) -> tuple[list[Item], list[tuple[str, str]]]:
    """Probe every file; return the usable items (in the order of `paths`) and the skipped (file, reason) pairs,
    which have been warned about. Raises DataError naming the files tried when none is usable.

    Probing reads headers only; large lists are probed by a few threads (file opening is I/O-bound, and the
    result keeps the input order, so it does not depend on timing).
    """
    paths = [Path(p) for p in paths]
    if len(paths) > 64:
        with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
            results = list(pool.map(lambda p: _probe_or_reason(p, spec), paths, chunksize=16))
    else:
        results = [_probe_or_reason(p, spec) for p in paths]
    items = [r for r in results if isinstance(r, Item)]
    skipped = [r for r in results if not isinstance(r, Item)]
    warn_skipped(skipped, field)
    if not items:
        raise DataError(no_readable_message(field, skipped))
    return items, skipped


def no_readable_message(field: str, tried: list[tuple[str, str]]) -> str:
    shown = "\n".join(f"  {name}: {why}" for name, why in tried[:10])
    more = f"\n  ... and {len(tried) - 10} more" if len(tried) > 10 else ""
    return (f"{field}: none of the {len(tried)} data files can be used:\n{shown}{more}\n"
            "  fix: point the config at readable images or videos (videos need at least "
            "(sequence_length - 1) * frame_stride + 1 frames)")


def warn_skipped(skipped: list[tuple[str, str]], field: str) -> None:
    for name, why in skipped[:_MAX_INDIVIDUAL_WARNINGS]:
        warnings.warn(f"{field}: skipping {name}: {why}", BadFileWarning, stacklevel=3)
    if len(skipped) > _MAX_INDIVIDUAL_WARNINGS:
        warnings.warn(f"{field}: skipped {len(skipped) - _MAX_INDIVIDUAL_WARNINGS} more unreadable files "
                      "(the stream's `skipped` attribute lists them all)", BadFileWarning, stacklevel=3)


class FailureLog:
    """Counts skipped files: those left out when indexing and those that failed later while being read.

    Lives in the main process; worker processes report failures with each batch. Each file is warned about once.
    """

    def __init__(self, field: str, index_skipped: list[tuple[str, str]]):
        self.field = field
        self.skipped: list[tuple[str, str]] = list(index_skipped)
        self._names = {name for name, _ in index_skipped}

    def record(self, failures: list[tuple[str, str]]) -> None:
        for name, why in failures:
            if name not in self._names:
                self._names.add(name)
                self.skipped.append((name, why))
                warnings.warn(f"{self.field}: skipping {name}: {why}", BadFileWarning, stacklevel=3)

    @property
    def count(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return sorted(self._names)

    def restore(self, names: list[str]) -> None:
        """Count files that a run before a resume had already skipped (no new warning)."""
        for n in names:
            if n and n not in self._names:
                self._names.add(n)
                self.skipped.append((n, "skipped before resume"))


class _Candidates:
    """Replacement files for training sample (epoch, index): every other item once, in a seeded order."""

    def __init__(self, seed: int, epoch: int, index: int, n: int):
        self._args = (seed, epoch, index, n)
        self._order: np.ndarray | None = None
        self._pos = 0
        self.tried: set[int] = set()

    def next(self) -> int | None:
        seed, epoch, index, n = self._args
        if self._order is None:  # only built once something failed
            self._order = seeded_rng(seed, epoch, index, _TAG_REPLACE).permutation(n)
        while self._pos < n:
            j = int(self._order[self._pos])
            self._pos += 1
            if j not in self.tried:
                return j
        return None


class ClipDataset(Dataset):
    """Map-style dataset. Training keys are (epoch, index) pairs, validation keys plain indices."""

    def __init__(self, items: list[Item], spec: SampleSpec, *, train: bool, seed: int = 0,
                 arrays: list[np.ndarray] | None = None, field: str = "data"):
        if spec.pseudo_video and any(it.kind == "video" for it in items):
            raise ValueError("pseudo-videos are built from images only")
        self.items = items
        self.spec = spec
        self.train = train
        self.seed = seed
        self.arrays = arrays
        self.field = field
        self._array_images: dict[int, Image.Image] = {}  # in-memory photos as Pillow images, made on first use

    def _array_image(self, j: int) -> Image.Image:
        if j not in self._array_images:
            if self.arrays is None:
                raise ValueError(f"item {j} is an in-memory array but the dataset holds no arrays")
            self._array_images[j] = array_to_image(self.arrays[j])
        return self._array_images[j]

    def __len__(self) -> int:
        return len(self.items)

    # --- reading -----------------------------------------------------------------------------------------------

    def _read(self, j: int, start_fraction: float | None, crop: CropParams,
              short_side: int | None = None) -> list[np.ndarray]:
        """Frames of item j: one for an image, sequence_length for a video. Raises MEDIA_ERRORS."""
        item, spec = self.items[j], self.spec
        short = spec.short_side if short_side is None else short_side
        if item.kind == "video":
            room = item.num_frames - spec.span
            if start_fraction is None:
                start = room // 2  # validation: the middle clip
            else:
                start = min(int(start_fraction * (room + 1)), room)
            clip = read_clip(item.name, start, spec.sequence_length, spec.frame_stride, short_side=short)
            return [resize_crop(im, short, spec.resolution, crop) for im in clip.frames]
        if item.kind == "array":
            img: Image.Image = self._array_image(j)
        else:
            img = load_image(item.name, min_short_side=short)
        return [resize_crop(img, short, spec.resolution, crop)]

    def _members(self, index: int, rng: np.random.Generator | None) -> list[int]:
        """Items that make up the sample: the item itself, plus D − 1 more images for a pseudo-video."""
        d, n = self.spec.sequence_length, len(self.items)
        if not self.spec.pseudo_video or d == 1:
            return [index]
        if rng is None:  # validation: the next images, cyclically
            return [(index + k) % n for k in range(d)]
        if n - 1 >= d - 1:  # distinct images when there are enough
            others = rng.choice(n - 1, size=d - 1, replace=False)
            return [index] + [int(o) + int(o >= index) for o in others]  # skip over the anchor itself
        return [index] + [int(o) for o in rng.integers(0, n, size=d - 1)]

    def train_sample(self, epoch: int, index: int) -> LoadedSample:
        rng = seeded_rng(self.seed, epoch, index, _TAG_SAMPLE)
        crop = draw_crop_params(rng, self.spec.random_crop, self.spec.hflip)
        start_fraction = float(rng.random())
        members = self._members(index, rng)
        short = draw_short_side(self.spec.short_side_range, seeded_rng(self.seed, epoch, index, _TAG_SCALE))
        failures: list[tuple[str, str]] = []
        candidates = _Candidates(self.seed, epoch, index, len(self.items))
        frames: list[np.ndarray] = []
        for j in members:
            while True:
                candidates.tried.add(j)
                try:
                    frames.extend(self._read(j, start_fraction, crop, short))
                    break
                except MEDIA_ERRORS as e:
                    failures.append((self.items[j].name, _reason(e)))
                nxt = candidates.next()
                if nxt is None:
                    raise DataError(no_readable_message(self.field, failures))
                j = nxt
        return LoadedSample(np.stack(frames), failures)  # (D, H, W, 3)

    def val_sample(self, index: int) -> LoadedSample:
        frames: list[np.ndarray] = []
        for j in self._members(index, None):
            try:
                frames.extend(self._read(j, None, CENTER))
            except MEDIA_ERRORS as e:
                return LoadedSample(None, [(self.items[j].name, _reason(e))])
        return LoadedSample(np.stack(frames), [])

    def __getitem__(self, key) -> LoadedSample:
        if self.train:
            epoch, index = key
            return self.train_sample(int(epoch), int(index))
        return self.val_sample(int(key))

    def first_readable(self, log_failures: FailureLog) -> int:
        """Index of the first item that decodes (validation-style read); DataError naming the files tried if none.

        Run once when a loader is built, so a source whose files all open but none decodes stops before training.
        """
        failures: list[tuple[str, str]] = []
        for j in range(len(self.items)):
            try:
                self._read(j, None, CENTER)
                log_failures.record(failures)
                return j
            except MEDIA_ERRORS as e:
                failures.append((self.items[j].name, _reason(e)))
        log_failures.record(failures)
        raise DataError(no_readable_message(self.field, log_failures.skipped))


def collate(samples: list[LoadedSample]) -> tuple[torch.Tensor | None, list[tuple[str, str]]]:
    """Stack samples into a (B, D, H, W, C) uint8 batch; dropped validation samples are left out (None if all)."""
    failures = [f for s in samples for f in s.failures]
    frames = [s.frames for s in samples if s.frames is not None]
    batch = torch.from_numpy(np.stack(frames)) if frames else None  # (B, D, H, W, 3)
    return batch, failures
