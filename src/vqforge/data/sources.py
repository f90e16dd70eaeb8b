"""Finding data files: directories (walked recursively), explicit files, list files and glob patterns.

This is the config-time half of data loading: it only looks at names, never at file contents. A missing path, a glob
that matches nothing or a directory without a single image or video is a `ConfigError` that names the config field.
Whether a file can actually be decoded is decided later (`vqforge.data.dataset.index_files`).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Literal

from ..config.schema import DataConfig
from ..errors import ConfigError

MediaKind = Literal["image", "video"]

# Matched case-insensitively. GIF and multi-page TIFF contribute their first frame.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv", ".flv", ".wmv", ".ts", ".3gp"}
)
# An explicitly listed file with one of these extensions is a list of data paths, one per line
# ('#' starts a comment; relative paths are relative to the list file's folder).
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst", ".list"})

_GLOB_CHARS = set("*?[")


def media_kind(path: str | os.PathLike) -> MediaKind | None:
    """'image' or 'video' from the file extension (case-insensitive); None for anything else."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def is_glob(entry: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in entry)


def _hidden(name: str) -> bool:
    # dot files include macOS '._name.jpg' resource forks, which are not images
    return name.startswith(".")


def walk_media(directory: Path) -> list[Path]:
    """Every image/video file under `directory` (recursive, sorted, hidden files and folders left out).

    Files with other extensions (README.txt, labels.json, ...) are ignored without a warning: a data folder
    commonly holds them. An explicitly listed file with an unknown extension is instead kept and later skipped
    with a warning, because the user named it.
    """
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if not _hidden(name) and media_kind(name) is not None:
                found.append(Path(root) / name)
    return found


def _resolve_entry(entry: str, where: str, base: Path | None, allow_lists: bool) -> list[Path]:
    text = os.path.expanduser(entry.strip())
    if not text:
        raise ConfigError(where, "is an empty path", "remove the empty entry")
    if base is not None and not os.path.isabs(text):
        text = str(base / text)
    if is_glob(text):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise ConfigError(where, f"the glob pattern {entry!r} matches no file",
                              "check the pattern (use '**' to match inside subfolders) and the working directory "
                              f"({os.getcwd()})")
        out: list[Path] = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(walk_media(p))
            elif not _hidden(p.name):
                out.append(p)
        if not out:
            raise ConfigError(where, f"the glob pattern {entry!r} matches only folders without image or video files",
                              _extensions_fix())
        return out
    p = Path(text)
    if p.is_dir():
        files = walk_media(p)
        if not files:
            raise ConfigError(where, f"the folder {entry!r} contains no image or video file", _extensions_fix())
        return files
    if p.is_file():
        if p.suffix.lower() in LIST_EXTENSIONS and allow_lists:
            return _read_list_file(p, where)
        return [p]
    if p.parent.is_dir():
        raise ConfigError(where, f"{entry!r} does not exist", "fix the path (relative paths are relative to "
                          f"the working directory {os.getcwd()})")
    raise ConfigError(where, f"{entry!r} does not exist (its folder {str(p.parent)!r} is missing too)",
                      "fix the path or create the folder")


def _read_list_file(path: Path, where: str) -> list[Path]:
    out: list[Path] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(where, f"the list file {str(path)!r} cannot be read ({e})",
                          "give a UTF-8 text file with one path per line") from e
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.extend(_resolve_entry(line, f"{where} ({path.name} line {n})", path.parent, allow_lists=False))
    if not out:
        raise ConfigError(where, f"the list file {str(path)!r} names no file", "add one path per line")
    return out


def _extensions_fix() -> str:
    exts = " ".join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
    return f"point it at a folder with images or videos (recognised extensions, any case: {exts})"


def resolve_sources(paths: list[str], field: str) -> list[Path]:
    """Expand the config entries `paths` (files, folders, list files, globs) into data files, in a stable order.

    Folders are walked recursively (sorted, hidden entries skipped); glob matches are sorted; duplicates are kept
    once, at their first position. `field` is the config path used in errors (e.g. "data.train").
    Raises ConfigError for a missing path, a glob without matches or a folder without media files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [str(paths)]
    out: list[Path] = []
    seen: set[str] = set()
    for i, entry in enumerate(paths):
        for p in _resolve_entry(str(entry), f"{field}[{i}]", None, allow_lists=True):
            key = os.path.normpath(str(p))
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


# --- the data section's config-time checks ----------------------------------------------------------------------
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


def resolve_split(cfg: DataConfig, split: str) -> list[Path]:
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


def check_data_config(cfg: DataConfig) -> None:
    """Config-time validation of the data section: paths exist, globs match, image/video/use_images agree.

    Reads no file contents (that happens when the loaders are built). Raises ConfigError naming the field and fix.
    Whether training data is required at all is `DataConfig.check_training_data`'s business.
    """
    cfg.check("data")
    for split in ("train", "val"):
        resolve_split(cfg, split)
