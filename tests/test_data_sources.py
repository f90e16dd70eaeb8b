"""Config-time data checks: folder walks, globs, list files, and the errors for paths that do not exist."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vqforge.config.schema import DataConfig
from vqforge.data import check_data_config, media_kind, resolve_sources, resolve_split
from vqforge.data.synthetic import write_image
from vqforge.errors import ConfigError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, np.zeros((8, 8, 3), np.uint8))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _img(tmp_path / "d" / "a.PNG")
    _img(tmp_path / "d" / "sub" / "b.Jpeg")
    _img(tmp_path / "d" / "sub" / "deeper" / "c.webp")
    (tmp_path / "d" / "sub" / "clip.MP4").write_bytes(b"not really a video")  # kind comes from the name
    (tmp_path / "d" / "notes.txt").write_text("not data")
    _img(tmp_path / "d" / ".hidden.png")
    _img(tmp_path / "d" / ".cache" / "e.png")
    return tmp_path


def test_folder_walk_is_recursive_case_insensitive_and_sorted(tree: Path):
    got = resolve_sources([str(tree / "d")], "data.train")
    rel = [p.relative_to(tree / "d").as_posix() for p in got]
    assert rel == ["a.PNG", "sub/b.Jpeg", "sub/clip.MP4", "sub/deeper/c.webp"]


def test_globs_explicit_files_and_list_files(tree: Path, tmp_path: Path):
    pattern = str(tree / "d" / "**" / "*.webp")
    explicit = str(tree / "d" / "a.PNG")
    listing = tmp_path / "files.txt"
    listing.write_text("# training files\nd/sub/b.Jpeg\n\nd/a.PNG  # again: kept once\n")
    got = resolve_sources([pattern, explicit, str(listing)], "data.train")
    assert [p.name for p in got] == ["c.webp", "a.PNG", "b.Jpeg"]


def test_explicit_unsupported_file_is_kept_for_the_prober(tmp_path: Path):
    f = tmp_path / "labels.json"
    f.write_text("{}")
    assert resolve_sources([str(f)], "data.train") == [f]
    assert media_kind(f) is None and media_kind("x.GIF") == "image" and media_kind("y.WebM") == "video"


def test_missing_folder_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        resolve_sources([str(tmp_path / "nope" / "frames")], "data.val")
    assert e.value.path == "data.val[0]" and "does not exist" in e.value.problem and e.value.fix


def test_glob_without_match_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        resolve_sources([str(tmp_path / "*.mp4")], "data.train")
    assert e.value.path == "data.train[0]" and "matches no file" in e.value.problem


def test_folder_without_media_is_a_config_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match="contains no image or video"):
        resolve_sources([str(tmp_path / "empty")], "data.train")


def test_list_file_naming_a_missing_file(tmp_path: Path):
    listing = tmp_path / "train.lst"
    listing.write_text("gone.png\n")
    with pytest.raises(ConfigError) as e:
        resolve_sources([str(listing)], "data.train")
    assert "train.lst line 1" in e.value.path


def test_images_as_clips_need_use_images(tree: Path):
    d = str(tree / "d" / "a.PNG")
    with pytest.raises(ConfigError) as e:
        check_data_config(DataConfig(train=[d], sequence_length=4))
    assert e.value.path == "data.sequence_length" and "use_images" in e.value.fix
    cfg = DataConfig(train=[d], sequence_length=4, use_images=True)
    check_data_config(cfg)
    assert resolve_split(cfg, "train") == [Path(d)] and resolve_split(cfg, "val") == []


def test_use_images_with_videos_is_refused(tree: Path):
    with pytest.raises(ConfigError) as e:
        check_data_config(DataConfig(train=[str(tree / "d")], use_images=True))
    assert e.value.path == "data.use_images"


def test_sample_photos_sequence_needs_use_images():
    with pytest.raises(ConfigError, match="sample photos"):
        check_data_config(DataConfig(source="sample_photos", sequence_length=2))


def test_relative_paths_resolve_against_the_working_directory(tree: Path, monkeypatch):
    monkeypatch.chdir(tree)
    got = resolve_sources(["d/sub"], "data.train")
    assert [p.as_posix() for p in got] == ["d/sub/b.Jpeg", "d/sub/clip.MP4", "d/sub/deeper/c.webp"]
    assert not os.path.isabs(got[0])
