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
