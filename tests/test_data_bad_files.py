"""Bad input: each kind of unusable file is skipped with a warning naming it, counted, and batches stay full."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vqforge.config.schema import DataConfig
from vqforge.data import BadFileWarning, build_train_stream, build_val_loader
from vqforge.data.synthetic import index_level, indexed_frames, level_index, moving_frames, write_image, write_video
from vqforge.errors import DataError


def _good_images(d: Path, n: int = 3) -> list[Path]:
    out = []
    for i in range(n):
        a = next(moving_frames(1, 40, 48, seed=i))
        a[:, :, 2] = index_level(i)  # identity in the blue channel
        out.append(write_image(d / f"good{i}.png", a))
    return out


def _truncated_jpeg(path: Path) -> Path:
    write_image(path, next(moving_frames(1, 64, 64, seed=9)), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact (opens), pixel data cut (fails to decode)
    return path


def _build(cfg: DataConfig, seed: int = 0):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = build_train_stream(cfg, seed=seed)
    return stream, [str(w.message) for w in caught if issubclass(w.category, BadFileWarning)]


@pytest.mark.parametrize("case", ["zero_byte", "random_bytes", "unsupported", "truncated_mp4", "short_video"])
def test_unusable_files_are_skipped_when_indexing(tmp_path, case):
    good = _good_images(tmp_path)
    if case == "zero_byte":
        bad = tmp_path / "empty.jpg"
        bad.write_bytes(b"")
        expect = "empty"
    elif case == "random_bytes":
        bad = tmp_path / "noise.png"
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
        expect = "cannot open"
    elif case == "unsupported":
        bad = tmp_path / "labels.csv"
        bad.write_text("a,b\n")
        expect = "unsupported file type"
    elif case == "truncated_mp4":
        full = write_video(tmp_path / "full.mp4", moving_frames(12, 48, 64))
        bad = tmp_path / "cut.mp4"
        bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # the index (moov) is at the end: gone
        full.unlink()
        expect = "cannot open as video"
    else:
        bad = write_video(tmp_path / "short.mp4", moving_frames(3, 48, 64))
        expect = "too short: 3 frames, a clip needs 4"
    if case == "short_video":  # videos and images cannot be mixed in clips of 4, so this one uses videos only
        long = write_video(tmp_path / "long.mp4", indexed_frames(10, 48, 64))
        cfg = DataConfig(train=[str(long), str(bad)], sequence_length=4, resolution=16, batch_size=4)
    else:
        cfg = DataConfig(train=[str(p) for p in good] + [str(bad)], resolution=16, batch_size=4)
    stream, msgs = _build(cfg)
    assert stream.skipped_files == 1 and len(stream.dataset) == (1 if case == "short_video" else 3)
    assert len(msgs) == 1 and str(bad) in msgs[0] and expect in msgs[0]
    assert stream.skipped[0][0] == str(bad)
    assert next(stream).shape[0] == 4  # full batches from what is left


def test_file_that_fails_while_decoding_is_replaced_deterministically(tmp_path):
    good = _good_images(tmp_path, 4)
    bad = _truncated_jpeg(tmp_path / "zz_truncated.jpg")  # sorts last: not the file checked at build time
    cfg = DataConfig(train=[str(tmp_path)], resolution=16, batch_size=5)
    stream, msgs = _build(cfg)
    assert msgs == [] and stream.skipped_files == 0  # the header is fine
    with pytest.warns(BadFileWarning, match="zz_truncated.jpg.*truncated"):
        batch = next(stream)  # all 5 samples of epoch 0: the truncated one is among them
    assert batch.shape == (5, 1, 16, 16, 3) and stream.skipped_files == 1
    ids = [level_index(s[0, :, :, 2].double().mean()) for s in batch]
    assert sorted(set(ids)) == list(range(4)) and len(ids) == 5  # one good image stood in for the bad one
    again, _ = _build(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(next(again), batch)
    state = stream.state_dict()
    assert state["skipped_files"] == 1 and str(bad) in state["skipped_names"]
    assert len(good) == 4


def test_decode_failures_in_workers_reach_the_main_process(tmp_path):
    _good_images(tmp_path, 2)
    _truncated_jpeg(tmp_path / "zz_truncated.jpg")
    cfg = DataConfig(train=[str(tmp_path)], resolution=16, batch_size=3, num_workers=2)
    stream, _ = _build(cfg)
    with pytest.warns(BadFileWarning, match="zz_truncated.jpg"):
        batch = next(stream)
    stream.close()
    assert batch.shape[0] == 3 and stream.skipped_files == 1


def test_truncated_video_that_opens_but_does_not_decode(tmp_path):
    import av

    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:  # index first, so it still opens
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for f in indexed_frames(12, 48, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # flat frames are tiny: this cuts away the frame data
    good = write_video(tmp_path / "good.mp4", indexed_frames(12, 48, 64))
    cfg = DataConfig(train=[str(path), str(good)], sequence_length=4, resolution=16, batch_size=4)
    stream, msgs = _build(cfg)  # the build-time check decodes the first file and finds it broken
    assert len(msgs) == 1 and "faststart.mp4" in msgs[0] and "decodable frames" in msgs[0]
    batch = next(stream)
    assert batch.shape == (4, 4, 16, 16, 3) and stream.skipped_files == 1
    for s in batch:  # every clip came from good.mp4: consecutive frames
        first = level_index(s[0].double().mean())
        assert [level_index(f.double().mean()) for f in s] == list(range(first, first + 4))


def test_no_readable_file_is_a_data_error_naming_the_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    cfg = DataConfig(train=[str(tmp_path)], resolution=16)
    with pytest.raises(DataError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_train_stream(cfg, seed=0)
    assert "a.png" in str(e.value) and "b.jpg" in str(e.value) and "data.train" in str(e.value)


def test_all_files_open_but_none_decodes_stops_before_training(tmp_path):
    _truncated_jpeg(tmp_path / "t1.jpg")
    _truncated_jpeg(tmp_path / "t2.jpg")
    cfg = DataConfig(train=[str(tmp_path)], resolution=16)
    with pytest.raises(DataError, match="t1.jpg") as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_train_stream(cfg, seed=0)
    assert "t2.jpg" in str(e.value)


def test_validation_drops_samples_that_fail(tmp_path):
    _good_images(tmp_path, 3)
    _truncated_jpeg(tmp_path / "zz_truncated.jpg")
    cfg = DataConfig(train=[str(tmp_path)], val=[str(tmp_path)], resolution=16, val_batch_size=4)
    loader = build_val_loader(cfg)
    with pytest.warns(BadFileWarning, match="zz_truncated"):
        (batch,) = list(loader)
    assert batch.shape[0] == 3 and loader.skipped_files == 1
    ids = [level_index(s[0, :, :, 2].double().mean()) for s in batch]
    assert ids == [0, 1, 2]


def test_large_folders_are_probed_in_order(tmp_path):
    # more than 64 files: probed by a thread pool; the result must still follow the sorted file order
    bad = {7, 30, 64}
    for i in range(70):
        p = tmp_path / f"f{i:03d}.png"
        if i in bad:
            p.write_bytes(b"")
        else:
            write_image(p, np.full((8, 8, 3), i, np.uint8))
    stream, msgs = _build(DataConfig(train=[str(tmp_path)], resolution=8))
    assert [Path(it.name).name for it in stream.dataset.items] == [f"f{i:03d}.png" for i in range(70) if i not in bad]
    assert stream.skipped_files == 3 and len(msgs) == 3
