"""Video decoding (frame order, seeking, frame counts, 720p) and the per-clip transforms and layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqforge.config.schema import DataConfig
from vqforge.data import (
    CropParams,
    MediaError,
    build_train_stream,
    build_val_loader,
    probe_video,
    read_clip,
    resize_crop,
    to_model_input,
    to_uint8_frames,
)
from vqforge.data.synthetic import index_level, indexed_frames, level_index, moving_frames, write_video
from vqforge.data.transforms import CENTER, crop_box


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        # H.264 with B-frames (veryfast) and a keyframe every 8 frames, so seeking has something to do
        "mp4": write_video(d / "count.mp4", indexed_frames(40, 48, 64), gop=8),
        "webm": write_video(d / "count.webm", indexed_frames(30, 48, 64), gop=8),
        "hd": write_video(d / "hd.mp4", indexed_frames(10, 720, 1280),
                          options={"preset": "ultrafast", "crf": "18"}),
    }


def _levels(frames) -> list[int]:
    return [level_index(np.asarray(f, dtype=np.float64).mean()) for f in frames]


def test_probe_reads_frame_counts(videos):
    mp4 = probe_video(videos["mp4"])
    assert (mp4.num_frames, mp4.width, mp4.height, mp4.count_source) == (40, 64, 48, "metadata")
    webm = probe_video(videos["webm"])  # WebM stores no frame count: estimated from duration × rate
    assert webm.num_frames == 30 and webm.count_source == "duration"


@pytest.mark.parametrize("kind", ["mp4", "webm"])
@pytest.mark.parametrize("start,length,stride", [(0, 4, 1), (13, 5, 1), (9, 4, 3), (26, 4, 1)])
def test_clip_frames_come_in_order(videos, kind, start, length, stride):
    clip = read_clip(videos[kind], start, length, stride)
    assert len(clip.frames) == length and clip.start == start
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in clip.frames)
    assert _levels(clip.frames) == [start + stride * j for j in range(length)]


def test_seeking_decodes_only_what_the_clip_needs(videos):
    clip = read_clip(videos["mp4"], 33, 4)
    assert _levels(clip.frames) == [33, 34, 35, 36]
    # keyframe at 32: frames 32..36 (plus at most a few B-frame reorderings), never the 37 from the start
    assert clip.decoded <= 8


def test_clip_running_past_the_end_moves_back(videos):
    clip = read_clip(videos["webm"], 28, 4)  # frames 28..31 do not exist; the last clip that fits is 26..29
    assert clip.start == 26 and _levels(clip.frames) == [26, 27, 28, 29]
    with pytest.raises(MediaError, match="fewer than"):
        read_clip(videos["webm"], 0, 16, 2)  # span 31 > 30 frames


def test_720p_clips_through_the_stream(videos):
    cfg = DataConfig(train=[str(videos["hd"])], sequence_length=8, resolution=64, batch_size=2)
    batch = next(build_train_stream(cfg, seed=3))
    assert batch.shape == (2, 8, 64, 64, 3) and batch.dtype == torch.uint8
    for sample in batch:
        first = level_index(sample[0].double().mean())
        assert 0 <= first <= 2 and _levels(sample) == list(range(first, first + 8))


def test_validation_takes_the_middle_clip(videos):
    cfg = DataConfig(train=[str(videos["mp4"])], val=[str(videos["mp4"]), str(videos["webm"])],
                     sequence_length=4, frame_stride=2, resolution=32, batch_size=1, val_batch_size=2)
    (batch,) = list(build_val_loader(cfg))
    # span 7: mp4 (40 frames) starts at (40 - 7) // 2 = 16, webm (30 frames) at 11
    assert [_levels(s) for s in batch] == [[16, 18, 20, 22], [11, 13, 15, 17]]


# --- transforms --------------------------------------------------------------------------------------------------


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)  # value grows with the column
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)  # and with the row
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8))


def test_center_crop_geometry():
    img = _gradient(200, 100)
    out = resize_crop(img, short_side=50, size=50, p=CENTER)  # → 100×50, crop columns 25..74
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    cols = out[:, :, 0].astype(float).mean(0)
    src_x = (np.arange(50) + 25 + 0.5) * 2 - 0.5  # output column c samples source column 2(c + 25) + 0.5
    np.testing.assert_allclose(cols[2:-2], (src_x * 255 / 199)[2:-2], atol=2.0)
    rows = out[:, :, 1].astype(float).mean(1)  # full height kept
    np.testing.assert_allclose(rows[2:-2], (((np.arange(50) + 0.5) * 2 - 0.5) * 255 / 99)[2:-2], atol=2.0)


def test_resize_then_crop_uses_the_resize_size():
    img = _gradient(120, 80)
    out = resize_crop(img, short_side=64, size=32, p=CENTER)  # → 96×64, crop x 32..63, y 16..47
    assert out.shape == (32, 32, 3)
    assert crop_box(120, 80, 64, 32, CENTER) == pytest.approx((32 * 1.25, 16 * 1.25, 64 * 1.25, 48 * 1.25))


def test_random_crops_stay_inside_and_flip_mirrors():
    for fx in (0.0, 0.3, 0.999):
        box = crop_box(300, 200, 100, 64, CropParams(fx, 1 - fx, False, False))
        assert 0 <= box[0] and box[2] <= 300 and 0 <= box[1] and box[3] <= 200
        assert box[2] - box[0] == pytest.approx(128) and box[3] - box[1] == pytest.approx(128)
    img = _gradient(64, 64)
    a = resize_crop(img, 64, 64, CropParams(0.2, 0.7, False, False))
    b = resize_crop(img, 64, 64, CropParams(0.2, 0.7, True, False))
    np.testing.assert_array_equal(a[:, ::-1], b)
    np.testing.assert_array_equal(a, np.asarray(img))  # no scaling at the exact size: pixels untouched


def test_a_clip_gets_one_crop_for_all_frames(tmp_path):
    frames = list(moving_frames(6, 96, 128, seed=1))
    p = CropParams(0.9, 0.1, True, False)
    out = [resize_crop(Image.fromarray(f), 48, 32, p) for f in frames]
    box = crop_box(128, 96, 48, 32, p)
    for f, o in zip(frames, out):
        ref = np.asarray(Image.fromarray(f).resize((32, 32), Image.BICUBIC, box=box))[:, ::-1]
        np.testing.assert_array_equal(o, ref)


def test_stream_augmentations_are_shared_by_the_frames_of_a_clip(tmp_path):
    # a static pattern: if crop or flip differed between frames of a clip, the frames would differ
    still = next(moving_frames(1, 96, 128, seed=4))
    path = write_video(tmp_path / "still.mp4", [still] * 12, gop=4, options={"preset": "ultrafast", "qp": "0"})
    cfg = DataConfig(train=[str(path)], sequence_length=4, frame_stride=2, resolution=32, resize=64, hflip=True,
                     batch_size=6)
    batch = next(build_train_stream(cfg, seed=0)).int()  # one file, six differently augmented clips
    for sample in batch:
        assert (sample - sample[0]).abs().max() <= 2  # near-lossless coding noise only
    assert len({tuple(s[0, 0, :, 0].tolist()) for s in batch}) > 1  # and the clips themselves differ


def test_model_input_layout_and_range():
    batch = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8)
    batch[0, 0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    x = to_model_input(batch)
    assert x.shape == (6, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    for b in range(2):
        for d in range(3):
            assert torch.equal(x[b * 3 + d], batch[b, d].permute(2, 0, 1).float() / 127.5 - 1)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_uint8_frames(x, 3), batch)
    with pytest.raises(ValueError):
        to_model_input(batch.float())


def test_index_level_roundtrip():
    assert [level_index(index_level(i)) for i in range(42)] == list(range(42))


def test_image_formats_load_as_rgb(tmp_path):
    from vqforge.data import load_image

    frames = [Image.new("RGB", (20, 10), (200, 40, 40)), Image.new("RGB", (20, 10), (40, 40, 200))]
    frames[0].save(tmp_path / "anim.GIF", save_all=True, append_images=frames[1:])
    Image.new("L", (20, 10), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 10), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.fromarray(np.full((10, 20), 257 * 100, np.uint16)).save(tmp_path / "deep.tif")
    rotated = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90°
    rotated.save(tmp_path / "phone.jpg", exif=exif)

    def pixel(name):
        im = load_image(tmp_path / name)
        assert im.mode == "RGB"
        return im.size, np.asarray(im)[5, 5].tolist()

    size, px = pixel("anim.GIF")
    assert size == (20, 10) and px[0] > 150 and px[2] < 90  # the first frame (red), not the second
    assert pixel("gray.png") == ((20, 10), [77, 77, 77])
    assert pixel("alpha.png") == ((20, 10), [10, 20, 30])
    assert pixel("deep.tif") == ((20, 10), [100, 100, 100])  # 16 bit scaled, not clipped to 255
    assert pixel("phone.jpg")[0] == (10, 20)  # EXIF orientation applied
