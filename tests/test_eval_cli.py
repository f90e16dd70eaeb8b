"""`vqforge eval`, `encode` and `decode` end to end with a tiny exported model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vqforge.cli import main
from vqforge import images
from vqforge.eval import report
from vqforge.eval.metrics import to_uint8
from vqforge.models.pretrained import from_pretrained, save_pretrained
from vqforge.tokens.frames import decode_frames
from vqforge.tokens.io import load_indices

from conftest import tiny_config, tiny_dict

RES = 32  # crop size; the tiny model downsamples by 2 -> 16x16 tokens


def _export(tmp_path: Path, name: str, **model) -> Path:
    import vqforge
    from vqforge.config import parse_config

    torch.manual_seed(0)
    if model.get("family") == "vqvae2":
        d = tiny_dict()
        d["model"] = model
        cfg = parse_config(d)
    else:
        cfg = tiny_config(model=model)
    return save_pretrained(vqforge.build_model(cfg), cfg, tmp_path / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    vqvae2 = {"hidden_channels": 32, "res_channels": 8, "nb_res_layers": 1, "nb_levels": 2, "embed_dim": 8,
              "nb_entries": 16, "scaling_rates": [2, 2]}
    return {"plain": _export(d, "plain"), "rvq": _export(d, "rvq", quantizer={"rvq_levels": 3}),
            "other": _export(d, "other", n_embed=64), "vqvae2": _export(d, "vqvae2", family="vqvae2", vqvae2=vqvae2)}


def _smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    for i, a in enumerate(_smooth_images(3, RES)):
        Image.fromarray(a).save(d / f"img{i}.png")
    return d


def _model_input(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, H, W)


def _eval_reconstruction(model_dir: Path, frames: np.ndarray) -> np.ndarray:
    """The model's eval-mode forward reconstruction, quantized like a saved PNG: (n, H, W, 3) uint8."""
    model = from_pretrained(model_dir).eval()
    with torch.no_grad():
        y = model(_model_input(frames)).reconstruction
    return to_uint8(y).permute(0, 2, 3, 1).numpy()


def _read_pngs(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "10"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _read_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


# ------------------------------------------------------------------------------------------------ encode / decode


def test_image_round_trip_equals_eval_reconstruction(models, image_dir, tmp_path, capsys):
    out = tmp_path / "tokens.safetensors"
    assert main(["encode", str(models["plain"]), str(image_dir), "--out", str(out), "--resolution", str(RES)]) == 0
    indices, meta = load_indices(out)
    assert indices.shape == (3, 16, 16) and indices.dtype == torch.int64
    assert meta["input_shape"] == [3, 3, RES, RES] and meta["frame_count"] == 3 and meta["depth"] == 1
    assert [Path(s["file"]).name for s in meta["sources"]] == ["img0.png", "img1.png", "img2.png"]
    assert meta["model"]["family"] == "taming" and meta["model"]["variant"] == "EMAVQ"
    assert len(meta["model"]["config_sha256"]) == 64

    dec = tmp_path / "decoded"
    assert main(["decode", str(models["plain"]), str(out), "--out", str(dec)]) == 0
    got = _read_pngs([dec / f"img{i}.png" for i in range(3)])
    src = _read_pngs([image_dir / f"img{i}.png" for i in range(3)])
    np.testing.assert_array_equal(got, _eval_reconstruction(models["plain"], src))


def test_residual_npy_with_sidecar_and_depth_prefix(models, image_dir, tmp_path):
    out = tmp_path / "tokens.npy"
    assert main(["encode", str(models["rvq"]), str(image_dir / "img1.png"), "--out", str(out), "--resolution", "32"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["layout"] == "residual" and side["depth"] == 3 and side["num_codes"] == [32, 32, 32]
    arr = np.load(out)
    assert arr.shape == (1, 3, 16, 16)

    dec = tmp_path / "d1"
    assert main(["decode", str(models["rvq"]), str(out), "--out", str(dec), "--depth", "1"]) == 0
    model = from_pretrained(models["rvq"])
    with torch.no_grad():
        expected = to_uint8(model.decode(torch.from_numpy(arr).long()[:, :1])).permute(0, 2, 3, 1).numpy()
        full = to_uint8(model.decode(torch.from_numpy(arr).long())).permute(0, 2, 3, 1).numpy()
    got = _read_pngs([dec / "img1.png"])
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(expected, full)  # the prefix really dropped levels


def test_hierarchical_round_trip_one_tensor_per_level(models, image_dir, tmp_path):
    out = tmp_path / "h.safetensors"
    assert main(["encode", str(models["vqvae2"]), str(image_dir), "--out", str(out), "--resolution", str(RES)]) == 0
    indices, meta = load_indices(out)
    assert isinstance(indices, list) and [tuple(t.shape) for t in indices] == [(3, 8, 8), (3, 16, 16)]
    assert meta["layout"] == "hierarchical" and meta["index_shapes"] == [[8, 8], [16, 16]]
    dec = tmp_path / "dec"
    assert main(["decode", str(models["vqvae2"]), str(out), "--out", str(dec)]) == 0
    src = _read_pngs([image_dir / f"img{i}.png" for i in range(3)])
    np.testing.assert_array_equal(_read_pngs([dec / f"img{i}.png" for i in range(3)]),
                                  _eval_reconstruction(models["vqvae2"], src))


def test_video_round_trip(models, tmp_path):
    frames = _smooth_images(6, RES, seed=3)
    video = tmp_path / "clip.mp4"
    _write_video(video, frames, fps=10)
    seen = _read_video(video)  # what the encoder reads (after the lossy video codec)
    out = tmp_path / "clip.safetensors"
    assert main(["encode", str(models["plain"]), str(video), "--out", str(out), "--resolution", str(RES)]) == 0
    indices, meta = load_indices(out)
    assert meta["frame_count"] == 6 and meta["input_shape"] == [6, 3, RES, RES]
    assert meta["sources"] == [{"file": str(video), "kind": "video", "start": 0, "frames": 6, "fps": 10.0}]

    expected = _eval_reconstruction(models["plain"], seen)
    model = from_pretrained(models["plain"])
    decoded = np.concatenate(list(decode_frames(model, indices)))
    np.testing.assert_array_equal(decoded, expected)  # exact before MP4 coding

    # to a directory: the video source comes back as <stem>.mp4; and to an explicit .mp4
    for target, path in ((tmp_path / "dec", tmp_path / "dec" / "clip.mp4"), (tmp_path / "x.mp4", tmp_path / "x.mp4")):
        assert main(["decode", str(models["plain"]), str(out), "--out", str(target)]) == 0
        back = _read_video(path)
        assert back.shape == (6, RES, RES, 3)
        # H.264 yuv420p is lossy (chroma at half resolution): compare luma, which it keeps at full resolution;
        # a wrong or reordered frame scores far below this
        assert _psnr(_luma(back), _luma(expected)) > 30
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
            assert float(c.streams.video[0].average_rate) == pytest.approx(10.0)


def test_decode_refuses_indices_of_another_architecture(models, image_dir, tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["encode", str(models["plain"]), str(image_dir / "img0.png"), "--out", str(out)]) == 0
    assert main(["decode", str(models["other"]), str(out), "--out", str(tmp_path / "d")]) == 2
    assert "different model architecture" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["encode", "{plain}", "{img}", "--out", "{tmp}/t.txt"], "end the file name with .safetensors or .npy"),
    (["decode", "{plain}", "{tokens}", "--out", "{tmp}/d", "--depth", "2"], "residual VQ models only"),
    (["decode", "{rvq}", "{rtokens}", "--out", "{tmp}/d", "--depth", "4"], "must be in 1..3"),
    (["encode", "{vqvae2}", "{img}", "--out", "{tmp}/t.npy"], "write a .safetensors file instead"),
    (["eval", "{plain}", "--data", "{tmp}/nothing_here"], "does not exist"),
])
def test_user_errors_exit_2_with_a_fix(models, image_dir, tmp_path, capsys, argv, message):
    img = image_dir / "img0.png"
    tokens, rtokens = tmp_path / "p.safetensors", tmp_path / "r.safetensors"
    main(["encode", str(models["plain"]), str(img), "--out", str(tokens)])
    main(["encode", str(models["rvq"]), str(img), "--out", str(rtokens)])
    capsys.readouterr()
    subst = {"plain": models["plain"], "rvq": models["rvq"], "vqvae2": models["vqvae2"], "img": img, "tmp": tmp_path, "tokens": tokens,
             "rtokens": rtokens}
    assert main([a.format(**subst) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err


# ---------------------------------------------------------------------------------------------------------- eval


@pytest.fixture
def no_vgg(monkeypatch, tmp_path):
    from vqforge.losses import vgg

    monkeypatch.delenv(vgg.VGG16_ENV, raising=False)
    monkeypatch.setattr(vgg, "hub_cache_path", lambda: tmp_path / "no_vgg16.pth")


@pytest.fixture(scope="module")
def small_inception(tmp_path_factory) -> Path:
    """A TorchScript stand-in for InceptionV3 (fast): (N, 3, 299, 299) -> (N, 8)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.AvgPool2d(23), torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path_factory.mktemp("inc") / "small_inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notices about torch.export
        torch.jit.save(torch.jit.script(net.eval()), str(path))
    return path


def test_eval_writes_json_table_and_pngs(models, image_dir, tmp_path, capsys, no_vgg, small_inception):
    js = tmp_path / "m" / "metrics.json"
    out = tmp_path / "report"
    rc = main(["eval", str(models["rvq"]), "--data", str(image_dir), "--json", str(js), "--out", str(out),
               "--resolution", str(RES), "--batch-size", "2", "--inception", str(small_inception)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "psnr (dB)" in text and "perplexity" in text and "LPIPS skipped" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("metric"))
    # f2 (16x16 tokens), 3.75 bpp: bicubic x2 keeps 6 bpp, so bicubic x4 (1.5 bpp) is the same-rate column
    assert header.split()[1:] == ["model", "bicubic_x2", "bicubic_x4", "jpeg"]
    doc = json.loads(js.read_text())
    assert list(doc["baselines"]) == ["bicubic_x2", "bicubic_x4", "jpeg"]
    assert doc["baselines"]["jpeg"]["bpp"] <= doc["bits_per_pixel"] and doc["baselines"]["jpeg"]["rfid"] is not None
    for key in ("num_images", "psnr", "psnr_aggregate", "ssim", "lpips", "rfid", "bits_per_pixel", "codebook",
                "depth_curve", "skipped", "model", "data", "images"):
        assert key in doc, key
    assert doc["num_images"] == 3 and doc["resolution"] == [RES, RES]
    assert doc["lpips"] is None and "VGG16" in doc["skipped"]["lpips"]
    assert isinstance(doc["rfid"], float) and "rfid" not in doc["skipped"]
    assert [p["depth"] for p in doc["depth_curve"]] == [1, 2, 3] and len(doc["codebook"]) == 3
    assert doc["bits_per_pixel"] == pytest.approx(3 * 16 * 16 * 5 / (RES * RES))
    assert doc["model"]["family"] == "taming" and doc["data"]["resolution"] == RES

    with Image.open(out / "reconstructions.png") as im:
        assert im.size == images.labelled_grid_size(3, RES, RES)
    with Image.open(out / "codebook_usage.png") as im:
        assert im.size == report.usage_figure_size(3)
    with Image.open(out / "rate_distortion.png") as im:
        assert im.size == report.rd_figure_size()
    assert sorted(doc["images"]) == ["codebook_usage", "rate_distortion", "reconstructions"]

    # the same images through the library give the same PSNR
    src = _read_pngs(sorted(image_dir.glob("*.png")))
    from vqforge.eval import evaluate

    res = evaluate(from_pretrained(models["rvq"]), [_model_input(src)])
    assert doc["psnr"] == pytest.approx(res.psnr, rel=1e-6)


def test_eval_defaults_max_images_and_missing_inception(models, image_dir, tmp_path, capsys, no_vgg, monkeypatch):
    from vqforge.eval import fid

    monkeypatch.setattr(fid, "_wheel_dirs", lambda: [])
    monkeypatch.chdir(tmp_path)
    # default resolution: the model's training crop (32) from a shorter side of 48 (data.resize in the config)
    assert main(["eval", str(models["plain"]), "--data", str(image_dir), "--max-images", "2"]) == 0
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["num_images"] == 2 and doc["data"]["shorter_side"] == 48
    assert doc["rfid"] is None and "rFID skipped" in doc["skipped"]["rfid"]
    assert "rate_distortion" not in doc["images"] and not (tmp_path / "eval" / "rate_distortion.png").exists()
    with Image.open(tmp_path / "eval" / "reconstructions.png") as im:
        assert im.size == images.labelled_grid_size(2, RES, RES)


def test_eval_without_baselines(models, image_dir, tmp_path, capsys, no_vgg):
    js = tmp_path / "metrics.json"
    assert main(["eval", str(models["plain"]), "--data", str(image_dir), "--json", str(js), "--max-images", "2",
                 "--no-baselines"]) == 0
    assert json.loads(js.read_text())["baselines"] == {} and "jpeg" not in capsys.readouterr().out
