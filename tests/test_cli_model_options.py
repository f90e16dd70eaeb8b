"""The tokenizer-running commands' options end to end with tiny models: encode/decode/eval --batch-size, --ema,
--device; decode --fps; eval --precision; `vqforge info`; `export --dtype`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vqforge.cli import main
from vqforge.models.pretrained import EMA_WEIGHTS_FILE, WEIGHTS_FILE, from_pretrained, load_any, save_safetensors
from vqforge.quantizers.base import Quantizer
from vqforge.tokens.frames import decode_frames, encode_frames
from vqforge.tokens.io import load_indices

from test_eval_cli import RES, _export, _read_pngs, _smooth_images, _write_video


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    vqvae2 = {"hidden_channels": 32, "res_channels": 8, "nb_res_layers": 1, "nb_levels": 2, "embed_dim": 8,
              "nb_entries": 16, "scaling_rates": [2, 2]}
    out = {"plain": _export(d, "plain"), "rvq": _export(d, "rvq", quantizer={"rvq_levels": 3}),
           "vqvae2": _export(d, "vqvae2", family="vqvae2", vqvae2=vqvae2)}
    # a checkpoint-like directory whose weight-EMA copy differs from the raw weights
    ema_dir = _export(d, "with_ema")
    model = from_pretrained(ema_dir)
    g = torch.Generator().manual_seed(1)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    save_safetensors(state, ema_dir / EMA_WEIGHTS_FILE)
    out["with_ema"] = ema_dir
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    for i, a in enumerate(_smooth_images(5, RES, seed=7)):
        Image.fromarray(a).save(d / f"img{i}.png")
    return d


def _encode(model, images, out, *extra) -> tuple:
    # --resolution RES: the PNGs are RES x RES, so frames reach the model unchanged (no resize to data.resize)
    assert main(["encode", str(model), str(images), "--out", str(out), "--resolution", str(RES), *extra]) == 0
    return load_indices(out)


# ---------------------------------------------------------------------------------------------------------- encode
def test_encode_batch_size_changes_the_calls_not_the_tokens(models, image_dir, tmp_path, monkeypatch):
    calls: list[int] = []
    from vqforge.models.taming import TamingVQGAN

    orig_encode = TamingVQGAN.encode

    def spy(self, x, *a, **k):
        calls.append(x.shape[0])
        return orig_encode(self, x, *a, **k)

    monkeypatch.setattr(TamingVQGAN, "encode", spy)
    a, _ = _encode(models["plain"], image_dir, tmp_path / "a.safetensors", "--batch-size", "2")
    assert calls == [2, 2, 1]
    calls.clear()
    b, _ = _encode(models["plain"], image_dir, tmp_path / "b.safetensors")  # default 8: one call
    assert calls == [5]
    assert torch.equal(a, b)


def test_encode_batch_size_must_be_positive(models, image_dir, tmp_path, capsys):
    assert main(["encode", str(models["plain"]), str(image_dir), "--out", str(tmp_path / "t.npy"),
                 "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_encode_ema_uses_the_ema_weights(models, image_dir, tmp_path):
    raw, meta_raw = _encode(models["with_ema"], image_dir, tmp_path / "raw.safetensors")
    ema, meta_ema = _encode(models["with_ema"], image_dir, tmp_path / "ema.safetensors", "--ema")
    model, _ = load_any(models["with_ema"], ema=True)
    frames = iter(np.stack([np.asarray(Image.open(image_dir / f"img{i}.png")) for i in range(5)]))
    assert torch.equal(ema, encode_frames(model, frames))
    assert not torch.equal(raw, ema)
    assert meta_ema["model"]["ema"] is True and meta_raw["model"]["ema"] is False
    assert meta_ema["model"]["weights_sha256"] != meta_raw["model"]["weights_sha256"]


def test_encode_ema_without_ema_weights_is_a_clear_error(models, image_dir, tmp_path, capsys):
    assert main(["encode", str(models["plain"]), str(image_dir), "--out", str(tmp_path / "t.npy"), "--ema"]) == 2
    assert "model_ema.safetensors" in capsys.readouterr().err


def test_device_cpu_and_unavailable_cuda(models, image_dir, tmp_path, capsys):
    a, _ = _encode(models["plain"], image_dir, tmp_path / "a.npy", "--device", "cpu")
    b, _ = _encode(models["plain"], image_dir, tmp_path / "b.npy")  # auto
    if torch.cuda.is_available():  # another device: float differences may flip a few near-tie codes
        assert (a == b).float().mean() > 0.95
        pytest.skip("CUDA is available here: the missing-CUDA error cannot happen")
    assert torch.equal(a, b)
    for cmd in (["encode", str(models["plain"]), str(image_dir), "--out", str(tmp_path / "c.npy")],
                ["decode", str(models["plain"]), str(tmp_path / "a.npy"), "--out", str(tmp_path / "d")],
                ["eval", str(models["plain"]), "--data", str(image_dir), "--out", str(tmp_path / "e")]):
        assert main([*cmd, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and "CUDA is not available" in err
    assert main(["encode", str(models["plain"]), str(image_dir), "--out", str(tmp_path / "c.npy"),
                 "--device", "gpu0"]) == 2
    assert "not a device" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------- decode
def test_decode_ema_and_batch_size(models, image_dir, tmp_path):
    out = tmp_path / "t.safetensors"
    idx, _ = _encode(models["with_ema"], image_dir, out, "--ema")
    with pytest.warns(UserWarning, match="other weights of the same architecture"):  # encoded with --ema
        assert main(["decode", str(models["with_ema"]), str(out), "--out", str(tmp_path / "raw")]) == 0
    for args, name in ((["--ema"], "ema"), (["--ema", "--batch-size", "2"], "ema2")):
        assert main(["decode", str(models["with_ema"]), str(out), "--out", str(tmp_path / name), *args]) == 0
    pngs = {n: _read_pngs([tmp_path / n / f"img{i}.png" for i in range(5)]) for n in ("raw", "ema", "ema2")}
    model, _ = load_any(models["with_ema"], ema=True)
    np.testing.assert_array_equal(pngs["ema"], np.concatenate(list(decode_frames(model, idx))))
    np.testing.assert_array_equal(pngs["ema"], pngs["ema2"])
    assert not np.array_equal(pngs["raw"], pngs["ema"])


def test_decode_fps_sets_the_mp4_rate(models, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    _write_video(video, _smooth_images(4, RES, seed=3), fps=10)
    out = tmp_path / "clip.safetensors"
    _encode(models["plain"], video, out)
    for args, rate, target in (([], 10.0, tmp_path / "a.mp4"), (["--fps", "29.97"], 29.97, tmp_path / "b.mp4"),
                               (["--fps", "12"], 12.0, tmp_path / "dir" / "clip.mp4")):
        dest = target if target.suffix == ".mp4" and target.parent == tmp_path else target.parent
        assert main(["decode", str(models["plain"]), str(out), "--out", str(dest), *args]) == 0
        with av.open(str(target)) as c:
            assert float(c.streams.video[0].average_rate) == pytest.approx(rate, rel=1e-6)
            assert c.streams.video[0].frames in (0, 4)
    assert main(["decode", str(models["plain"]), str(out), "--out", str(tmp_path / "c.mp4"), "--fps", "0"]) == 2
    assert "--fps" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------ eval
def _eval(models, image_dir, tmp_path, name, *extra) -> dict:
    out = tmp_path / name
    assert main(["eval", str(models["plain"]), "--data", str(image_dir), "--out", str(out), "--no-baselines",
                 *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_eval_precision_and_device(models, image_dir, tmp_path, monkeypatch):
    fp32 = _eval(models, image_dir, tmp_path, "fp32", "--device", "cpu")
    assert fp32["model"]["precision"] == "fp32" and fp32["model"]["device"] == "cpu"
    seen: list[torch.dtype] = []
    from vqforge.models.taming import TamingVQGAN

    orig = TamingVQGAN.forward

    def spy(self, x, *a, **k):
        out = orig(self, x, *a, **k)
        seen.append(out.reconstruction.dtype)
        return out

    monkeypatch.setattr(TamingVQGAN, "forward", spy)
    bf16 = _eval(models, image_dir, tmp_path, "bf16", "--precision", "bf16", "--batch-size", "2")
    assert bf16["model"]["precision"] == "bf16"
    assert seen and set(seen) == {torch.bfloat16}  # the decoder really ran under bf16 autocast
    assert bf16["num_images"] == fp32["num_images"] == 5
    assert abs(bf16["psnr"] - fp32["psnr"]) < 1.0  # same model, rounded arithmetic
    seen.clear()
    auto = _eval(models, image_dir, tmp_path, "auto", "--precision", "auto")
    if torch.cuda.is_available():  # auto: bf16 on a CUDA device that has it
        assert auto["model"]["precision"] == "bf16" and set(seen) == {torch.bfloat16}
    else:
        assert auto["model"]["precision"] == "fp32"
        assert auto["psnr"] == fp32["psnr"] and set(seen) == {torch.float32}


# ------------------------------------------------------------------------------------------------------------ info
@pytest.mark.parametrize("name, maps", [("plain", [(16, 16)]), ("rvq", [(16, 16)] * 3), ("vqvae2", [(8, 8), (16, 16)])])
def test_info_matches_what_encode_writes(models, image_dir, tmp_path, capsys, name, maps):
    capsys.readouterr()
    assert main(["info", str(models[name]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    model = from_pretrained(models[name])
    assert doc["parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(doc["parameters_by_part"].values()) == doc["parameters"]
    assert doc["resolution"] == doc["training_resolution"] == RES
    assert [(m["height"], m["width"]) for m in doc["maps"]] == maps
    ks = [m["num_codes"] for m in doc["maps"]]
    idx, meta = _encode(models[name], image_dir, tmp_path / "t.safetensors")
    assert [list(s) for s in maps] == meta["index_shapes"] and ks == meta["num_codes"]
    assert [m["downsample"] for m in doc["maps"]] == [RES // h for h, _ in maps]
    tokens = sum(h * w for h, w in maps)
    assert doc["tokens_per_image"] == tokens
    bits = sum(h * w * math.log2(k) for (h, w), k in zip(maps, ks))
    assert doc["bits_per_image"] == pytest.approx(bits)
    assert doc["bits_per_pixel"] == pytest.approx(bits / RES**2)


def test_info_resolution_and_table(models, capsys):
    assert main(["info", str(models["plain"]), "--resolution", "64", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tokens_per_image"] == 32 * 32 and doc["maps"][0]["downsample"] == 2
    assert main(["info", str(models["plain"])]) == 0
    text = capsys.readouterr().out
    assert "tokens per image: 256" in text and "bits per pixel" in text and "parameters" in text
    assert main(["info", str(models["plain"]), "--resolution", "33"]) == 2
    assert "--resolution" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------- export
def _dtypes(path: Path) -> dict[str, torch.dtype]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys()}


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_export_dtype_casts_layer_weights_only(models, tmp_path, dtype, torch_dtype):
    src = models["with_ema"]
    out = tmp_path / dtype
    assert main(["export", str(src), "--out", str(out), "--dtype", dtype]) == 0
    model = from_pretrained(src)
    quantizer_keys = {f"{p}.{k}" for p, m in model.named_modules() if isinstance(m, Quantizer) for k in m.state_dict()}
    params = dict(model.named_parameters())
    got = _dtypes(out / WEIGHTS_FILE)
    assert set(got) == set(model.state_dict())
    layer = [k for k in params if k not in quantizer_keys]
    assert layer and all(got[k] == torch_dtype for k in layer)
    kept = [k for k in got if k not in layer]
    assert quantizer_keys and all(got[k] == model.state_dict()[k].dtype for k in kept)
    assert (out / WEIGHTS_FILE).stat().st_size < 0.6 * (src / WEIGHTS_FILE).stat().st_size
    back = from_pretrained(out)  # loads into the float32 model: layer weights rounded, codebooks exact
    for k, v in back.state_dict().items():
        want = model.state_dict()[k]
        if k in layer:
            assert v.dtype == torch.float32 and torch.equal(v, want.to(torch_dtype).float()), k
        else:
            assert torch.equal(v, want), k


def test_export_dtype_default_and_ema(models, tmp_path, capsys):
    out = tmp_path / "fp32"
    assert main(["export", str(models["with_ema"]), "--out", str(out), "--ema"]) == 0
    ema, _ = load_any(models["with_ema"], ema=True)
    back = from_pretrained(out)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in back.state_dict().items())
    assert main(["export", str(models["plain"]), "--out", str(tmp_path / "u"), "--format", "user",
                 "--dtype", "bf16"]) == 2
    assert "--dtype" in capsys.readouterr().err
