"""The codec: integer frequencies, range-coded container, exact round trips, honest sizes and bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import codec_models as cm
from conftest import REPO, tiny_config
from vqforge.codec import CodecError, compress, compress_tokens, decode_segment, decompress, decompress_tokens
from vqforge.codec.container import FIXED_SIZE, MAGIC, unpack
from vqforge.codec.frequencies import (TOTAL, FrequencyError, code_length_bits, logits_to_frequencies,
                                      logits_to_weights, weights_code_length_bits)
from vqforge.entropy import load_entropy_model, save_entropy_model
from vqforge.tokens.frames import encode_frames, input_frames
from vqforge.models.pretrained import save_pretrained

TOK_HASH = bytes(range(32))
RES = 32


def _structured_tokens(t: int, d: int, h: int, w: int, k: int, seed: int = 0) -> torch.Tensor:
    """Tokens with temporal and spatial redundancy (a slowly changing, blocky frame), so a context model helps."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, k, (d, h // 2 + 1, w // 2 + 1), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    base = base[:, :h, :w]
    frames = []
    for _ in range(t):
        change = torch.rand(d, h, w, generator=g) < 0.08
        base = torch.where(change, torch.randint(0, k, (d, h, w), generator=g), base)
        frames.append(base.clone())
    return torch.stack(frames)


@pytest.fixture(scope="module")
def context_model(tmp_path_factory) -> tuple[cm.ContextModel, Path]:
    torch.manual_seed(0)
    m = cm.ContextModel(32, dim=8, max_depth=2)
    cm.fit(m, _structured_tokens(4, 2, 8, 8, 32, seed=1), steps=40, lr=5e-2)
    path = save_entropy_model(m, tmp_path_factory.mktemp("ent") / "context")
    loaded, _ = load_entropy_model(path)
    return loaded, path


@pytest.fixture(scope="module")
def uniform_model() -> cm.UniformModel:
    return cm.UniformModel(32)


# --- frequencies -----------------------------------------------------------------------------------------------------
def test_frequencies_are_integers_with_floor_and_fixed_total():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 300)) * np.array([0.1, 5, 50])[rng.integers(0, 3, 50)][:, None]
    logits[0, 7] = 1e4  # one symbol takes nearly all the mass: the others still keep frequency 1
    f = logits_to_frequencies(torch.tensor(logits, dtype=torch.float32))
    assert f.dtype == np.int64 and (f >= 1).all() and (f.sum(1) == TOTAL).all()
    assert f[0, 7] == TOTAL - 299
    assert np.array_equal(f, logits_to_frequencies(torch.tensor(logits, dtype=torch.float32)))
    # a shift of all logits does not change the frequencies of these (exactly representable) values
    assert np.array_equal(logits_to_frequencies(np.float64([[1.0, 2.0, 3.0]])),
                          logits_to_frequencies(np.float64([[11.0, 12.0, 13.0]])))
    with pytest.raises(FrequencyError, match="non-finite"):
        logits_to_frequencies(np.array([[0.0, np.nan]]))
    with pytest.raises(FrequencyError, match="shape"):
        logits_to_frequencies(np.zeros(4))


def test_in_place_weights_equal_the_documented_steps_in_integers():
    """The coder's weights (computed in place, float64 throughout) equal F - 1 of the module doc's four steps done
    plainly with an integer floor and an integer remainder, bit for bit, for small and large vocabularies, flat
    and peaked logits, and ties (the remainder goes to the first maximum)."""
    rng = np.random.default_rng(1)
    for k, scale in [(2, 1.0), (7, 0.01), (256, 3.0), (256, 40.0), (1024, 8.0)]:
        z = (rng.normal(size=(64, k)) * scale).astype(np.float32)
        z[:8, : min(k, 3)] = z[:8, :1]  # ties at the top
        p = np.exp(z.astype(np.float64) - z.astype(np.float64).max(1, keepdims=True))
        p = p / p.sum(1, keepdims=True)
        ref = np.floor(p * (TOTAL - k)).astype(np.int64)
        top = np.argmax(ref, 1)
        ref[np.arange(len(ref)), top] += (TOTAL - k) - ref.sum(1)
        w = logits_to_weights(torch.from_numpy(z))
        assert w.dtype == np.float64 and np.array_equal(w, ref.astype(np.float64))
        assert np.array_equal(logits_to_frequencies(z), ref + 1)
        sym = rng.integers(0, k, len(z))
        assert weights_code_length_bits(w, sym) == code_length_bits(ref + 1, sym)
    src = np.float32([[0.5, 1.5, 2.5]])
    logits_to_weights(src)
    assert np.array_equal(src, np.float32([[0.5, 1.5, 2.5]]))  # the caller's logits are left alone


def test_code_length_counts_the_integer_frequencies():
    f = np.array([[TOTAL // 2, TOTAL // 4, TOTAL // 4]] * 3)
    assert code_length_bits(f, np.array([0, 1, 2])) == pytest.approx(1 + 2 + 2)


# --- token round trips -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("independent", [False, True])
def test_tokens_round_trip_and_random_access(context_model, independent):
    model, _ = context_model
    x = _structured_tokens(7, 2, 8, 8, 32, seed=3)
    c = compress_tokens(x, model, TOK_HASH, 32, intra_period=3, independent=independent, fps=25.0)
    y, h = decompress_tokens(c.data, model, TOK_HASH)
    assert torch.equal(y, x)
    assert (h.frames, h.depth, h.height, h.width, h.vocab_size, h.intra_period) == (7, 2, 8, 8, 32, 3)
    assert h.num_segments == 3 and h.independent == independent and h.fps == (25, 1)
    # any segment decodes alone, from its own bytes
    for s in range(3):
        assert torch.equal(decode_segment(c.data, h, s, model), x[3 * s:3 * s + 3])
    y2, _ = decompress_tokens(c.data, model, segments=[2])
    assert torch.equal(y2, x[6:])


def test_single_level_tokens_and_value_checks(uniform_model):
    x = torch.randint(0, 32, (3, 4, 5))
    c = compress_tokens(x, uniform_model, TOK_HASH, 32)
    y, _ = decompress_tokens(c.data, uniform_model)
    assert torch.equal(y[:, 0], x)
    with pytest.raises(CodecError, match="0..31"):
        compress_tokens(x + 32, uniform_model, TOK_HASH, 32)
    with pytest.raises(CodecError, match="predicts 32 symbols"):
        compress_tokens(x, uniform_model, TOK_HASH, 64)


def test_honest_size_within_one_percent(context_model):
    model, _ = context_model
    x = _structured_tokens(24, 2, 16, 16, 32, seed=5)  # 12288 tokens, several KB of payload
    c = compress_tokens(x, model, TOK_HASH, 32, intra_period=12)
    assert c.payload_bytes > 3000
    assert abs(c.total_bytes - c.estimate_bytes) <= 0.01 * c.estimate_bytes
    assert c.payload_bytes * 8 >= c.estimate_bits - 1  # no coder beats the ideal code length
    # the context model really models the data: under the uniform log2 K = 5 bits per token
    assert c.bits_per_token < 4.5
    u = compress_tokens(x, cm.UniformModel(32), TOK_HASH, 32, intra_period=12, adaptive=False)
    assert abs(u.total_bytes - u.estimate_bytes) <= 0.01 * u.estimate_bytes
    assert u.estimate_bits == pytest.approx(x.numel() * 5, rel=1e-6)


# --- wrong models and differing arithmetic ---------------------------------------------------------------------------
def test_wrong_models_are_named(context_model, uniform_model):
    model, _ = context_model
    x = _structured_tokens(2, 2, 8, 8, 32)
    c = compress_tokens(x, model, TOK_HASH, 32)
    with pytest.raises(CodecError, match="another entropy model"):
        decompress_tokens(c.data, uniform_model, TOK_HASH)
    with pytest.raises(CodecError, match="another tokenizer"):
        decompress_tokens(c.data, model, bytes(32))


def test_differing_arithmetic_is_caught_by_the_checksum(context_model):
    model, path = context_model
    x = _structured_tokens(4, 2, 8, 8, 32, seed=2)
    c = compress_tokens(x, model, TOK_HASH, 32)
    h = unpack(c.data)
    other, _ = load_entropy_model(path)
    with torch.no_grad():  # logits that differ slightly, as on a machine whose arithmetic differs
        other.out.bias.add_(torch.linspace(-0.3, 0.3, 32))
    with pytest.raises(CodecError, match="checksum") as e:
        decode_segment(c.data, h, 0, other)
    assert "byte " in str(e.value)


# --- bad files -------------------------------------------------------------------------------------------------------
def _expect_clean_error(data: bytes, model) -> str:
    with pytest.raises(CodecError) as e:
        decompress_tokens(data, model, TOK_HASH)
    assert "byte" in str(e.value)
    return str(e.value)


def test_truncated_corrupted_and_foreign_files(context_model):
    model, _ = context_model
    x = _structured_tokens(5, 2, 8, 8, 32, seed=4)
    data = compress_tokens(x, model, TOK_HASH, 32, intra_period=2).data
    h = unpack(data)
    assert "truncated" in _expect_clean_error(data[:-3], model)
    assert "truncated" in _expect_clean_error(data[:FIXED_SIZE - 1], model)
    assert "not a vqforge" in _expect_clean_error(b"\x89PNG\r\n\x1a\n" + bytes(200), model)
    assert "not a vqforge" in _expect_clean_error(b"", model)
    assert "unexpected bytes" in _expect_clean_error(data + b"\0", model)
    off = h.segments[1][0] + 2
    bad = bytearray(data)
    bad[off] ^= 0x10
    msg = _expect_clean_error(bytes(bad), model)
    assert "segment 1" in msg and "corrupted" in msg and str(h.segments[1][0]) in msg
    bad = bytearray(data)
    bad[85] ^= 1  # a shape field
    assert "header" in _expect_clean_error(bytes(bad), model)
    v2 = bytearray(data)
    v2[8] = 2
    assert "version 2" in _expect_clean_error(bytes(v2), model)


def test_fuzz_truncations_and_bit_flips_never_crash(context_model):
    model, _ = context_model
    data = compress_tokens(_structured_tokens(3, 2, 8, 8, 32, seed=6), model, TOK_HASH, 32, intra_period=2).data
    rng = np.random.default_rng(0)
    for _ in range(150):
        if rng.random() < 0.4:
            cut = int(rng.integers(0, len(data)))
            _expect_clean_error(data[:cut], model)
        else:
            bad = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
            if bytes(bad) != data:
                _expect_clean_error(bytes(bad), model)


# --- images and video through a tokenizer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rvq_tokenizer(tmp_path_factory) -> Path:
    import vqforge

    torch.manual_seed(0)
    cfg = tiny_config(model={"quantizer": {"rvq_levels": 2}}, data={"resolution": RES, "resize": RES})
    return save_pretrained(vqforge.build_model(cfg), cfg, tmp_path_factory.mktemp("tok") / "rvq")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, list[Path]]:
    from vqforge.data.samples import sample_photo_split

    d = tmp_path_factory.mktemp("media")
    train, val = sample_photo_split()
    images = []
    for i, a in enumerate(train[:2] + val[:1]):
        p = d / f"img{i}.png"
        Image.fromarray(np.ascontiguousarray(a[:96, :96])).save(p)
        images.append(p)
    video = d / "clip.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width = s.height = 48
        s.pix_fmt = "yuv420p"
        for t in range(6):
            frame = np.ascontiguousarray(train[0][100 + 2 * t:148 + 2 * t, 100:148])
            for pk in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return {"images": images, "video": [video]}


def _tokenizer_tokens(tok_dir: Path, files: list[Path]) -> torch.Tensor:
    from vqforge.models.pretrained import load_any

    model, _ = load_any(tok_dir)
    return encode_frames(model.eval(), input_frames(files, RES, RES, []))


@pytest.mark.parametrize("kind", ["images", "video"])
@pytest.mark.parametrize("depth", [1, 2])
def test_media_round_trip_every_depth(rvq_tokenizer, context_model, media, tmp_path, kind, depth):
    from vqforge.tokens.frames import decode_frames
    from vqforge.models.pretrained import load_any

    _, ent_path = context_model
    files = media[kind]
    out = tmp_path / "x.vqf"
    c = compress(rvq_tokenizer, ent_path, files, out, depth=depth, intra_period=4)
    assert out.read_bytes() == c.data
    expected = _tokenizer_tokens(rvq_tokenizer, files)[:, :depth]  # what `vqforge encode` gives
    target = tmp_path / ("dec.mp4" if kind == "video" else "dec")
    r = decompress(rvq_tokenizer, ent_path, out, target)
    assert torch.equal(r.tokens, expected)
    assert r.header.independent == (kind == "images")
    model, _ = load_any(rvq_tokenizer)
    frames = np.concatenate(list(decode_frames(model, expected)))
    assert np.array_equal(r.frames, frames)
    if kind == "video":
        assert r.header.fps == (12, 1) and target.is_file()
    else:
        assert sorted(p.name for p in r.written) == ["img0.png", "img1.png", "img2.png"]
        assert np.array_equal(np.asarray(Image.open(r.written[1])), frames[1])


def test_wrong_tokenizer_is_an_error(rvq_tokenizer, context_model, media, tmp_path):
    import vqforge

    _, ent_path = context_model
    out = tmp_path / "x.vqf"
    compress(rvq_tokenizer, ent_path, media["images"][:1], out)
    torch.manual_seed(1)
    cfg = tiny_config(model={"quantizer": {"rvq_levels": 2}}, data={"resolution": RES, "resize": RES})
    other = save_pretrained(vqforge.build_model(cfg), cfg, tmp_path / "other")
    with pytest.raises(CodecError, match="another tokenizer"):
        decompress(other, ent_path, out)


_DECODE_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
import codec_models
from vqforge.entropy import load_entropy_model
from vqforge.codec import decompress_tokens
model, _ = load_entropy_model(sys.argv[3])
tokens, _ = decompress_tokens(open(sys.argv[4], "rb").read(), model)
np.save(sys.argv[5], tokens.numpy())
print(torch.get_num_threads())
"""


def test_decode_in_another_process_with_another_thread_count(context_model, tmp_path):
    _, ent_path = context_model
    model, _ = load_entropy_model(ent_path)
    x = _structured_tokens(6, 2, 16, 16, 32, seed=8)
    (tmp_path / "x.vqf").write_bytes(compress_tokens(x, model, TOK_HASH, 32, intra_period=3).data)
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, "2", str(REPO / "tests"), str(ent_path),
                        str(tmp_path / "x.vqf"), str(tmp_path / "y.npy")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"
    assert np.array_equal(np.load(tmp_path / "y.npy"), x.numpy())


_CLI = "import sys; sys.path.insert(0, {tests!r}); import codec_models; from vqforge.cli import main; sys.exit(main())"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", _CLI.format(tests=str(REPO / "tests")), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_compress_then_decompress_in_separate_processes(rvq_tokenizer, context_model, media, tmp_path):
    _, ent_path = context_model
    f = tmp_path / "clip.vqf"
    r = _cli("compress", str(rvq_tokenizer), str(ent_path), *map(str, media["video"]), "--out", str(f),
             "--intra-period", "3")
    assert r.returncode == 0, r.stderr
    assert "bits per token" in r.stdout and f.read_bytes()[:8] == MAGIC
    r = _cli("decompress", str(rvq_tokenizer), str(ent_path), str(f), "--out", str(tmp_path / "png"), "--depth", "1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "png" / "clip.mp4").is_file()
    # the tokens match the tokenizer's, decoded in this process from the file the other one wrote
    model, _ = load_entropy_model(ent_path)
    tokens, h = decompress_tokens(f.read_bytes(), model)
    assert torch.equal(tokens, _tokenizer_tokens(rvq_tokenizer, media["video"]))
    assert h.metadata["sources"] == [{"file": "clip.mp4", "kind": "video", "frames": 6}]
    # --no-adaptive reaches the file's flags; the decoder follows the flag
    assert h.adaptive
    g = tmp_path / "plain.vqf"
    r = _cli("compress", str(rvq_tokenizer), str(ent_path), *map(str, media["video"]), "--out", str(g),
             "--intra-period", "3", "--no-adaptive")
    assert r.returncode == 0, r.stderr
    plain, hp = decompress_tokens(g.read_bytes(), model)
    assert not hp.adaptive and torch.equal(plain, tokens)
    # a damaged file: one clear line on stderr with the byte offset, exit code 2, no traceback
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.vqf").write_bytes(bytes(data))
    r = _cli("decompress", str(rvq_tokenizer), str(ent_path), str(tmp_path / "bad.vqf"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "byte" in r.stderr and "Traceback" not in r.stderr


def test_hierarchical_tokens_are_refused(context_model):
    model, _ = context_model
    with pytest.raises(CodecError, match="hierarchical"):
        compress_tokens(torch.zeros(2, 1, 2, 3, 4, dtype=torch.long), model, TOK_HASH, 32)
