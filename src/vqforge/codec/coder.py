"""Token arrays <-> the bytes of a `.vqf` file: the entropy model's steps, integer frequencies, range coding.

`compress_tokens` and `decompress_tokens` work on token arrays and need only the entropy model; the tokenizer enters
as its hash (the header records it so the file cannot be decoded with another tokenizer by mistake).
See `container` for the file layout and `frequencies` for how logits become the coder's integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable

import constriction
import numpy as np
import torch

from ..entropy.base import EntropyModel, FrameLayout, entropy_model_hash
from .container import (
    CodecError,
    Header,
    frame_crc,
    pack,
    segment_payload,
    tokens_hash,
    unpack,
)
from .adaptive import AdaptiveMixer
from .frequencies import PRECISION, FrequencyError, probs_to_weights, softmax64

DEFAULT_INTRA_PERIOD = 32


def _categorical() -> Any:
    # perfect=False always (and on both sides): the fast, exactly specified quantization that `frequencies` relies on
    return constriction.stream.model.Categorical(perfect=False)


@dataclass
class Compressed:
    """The file's bytes and what they cost."""

    data: bytes
    header_bytes: int
    payload_bytes: int
    estimate_bits: float  # -sum log2 p over every token, with the coder's integer frequencies
    frames: int
    tokens: int  # T * D * H * W

    @property
    def total_bytes(self) -> int:
        return len(self.data)

    @property
    def estimate_bytes(self) -> float:
        """The model's estimate plus the real header: what an ideal coder would need for this file."""
        return self.estimate_bits / 8 + self.header_bytes

    @property
    def bits_per_token(self) -> float:
        return 8 * self.payload_bytes / self.tokens


def _as_tokens(tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(T, H, W) or (T, D, H, W) -> (T, D, H, W) int64 CPU tensor."""
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise CodecError(f"tokens must be integers, got {t.dtype}\n  fix: pass the indices the tokenizer returned")
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or min(t.shape) < 1:
        raise CodecError(f"tokens must be (T, H, W) or (T, D, H, W), got shape {tuple(t.shape)}\n"
                         "  fix: pass single-level or residual indices (hierarchical VQ-VAE-2 maps are not supported)")
    return t.detach().to("cpu", torch.int64).contiguous()


def _checked_schedule(model: EntropyModel, layout: FrameLayout) -> list[torch.Tensor]:
    steps = [torch.as_tensor(s, dtype=torch.int64).reshape(-1).cpu() for s in model.schedule(layout)]
    allpos = torch.cat(steps) if steps else torch.empty(0, dtype=torch.int64)
    if allpos.numel() != layout.numel or not torch.equal(allpos.sort().values, torch.arange(layout.numel)):
        raise CodecError(f"entropy model {model.name!r}: its schedule for {layout} does not cover each of the "
                         f"{layout.numel} positions exactly once\n  fix: the entropy model's schedule() is wrong")
    return steps


def _step_weights(model: EntropyModel, buf: torch.Tensor, known: torch.Tensor, prev: torch.Tensor | None,
                  layout: FrameLayout, i: int, pos: torch.Tensor, device: torch.device,
                  mixer: AdaptiveMixer | None) -> np.ndarray:
    """(n, K) float64 F - 1 of coding step i: what constriction's Categorical(perfect=False) is given. With a mixer,
    the model's probabilities are first mixed with the segment's statistics (`adaptive`)."""
    n = len(pos)
    logits = model.step_logits(buf.to(device), known.to(device), None if prev is None else prev.to(device), layout, i)
    if tuple(logits.shape) != (n, layout.vocab_size):
        raise CodecError(f"entropy model {model.name!r}: step {i} gave logits of shape {tuple(logits.shape)}, "
                         f"expected ({n}, {layout.vocab_size})\n  fix: the entropy model's step_logits() is wrong")
    try:
        p = softmax64(logits.float())
        if mixer is not None:
            p = mixer.mix(p, pos.numpy(), buf.reshape(-1).numpy(), known.reshape(-1).numpy())
        return probs_to_weights(p)
    except FrequencyError as e:
        raise CodecError(f"entropy model {model.name!r}, step {i}: {e}\n"
                         "  fix: check the entropy model's weights") from e


def _model_device(model: EntropyModel) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _check_intra_period(intra_period: int) -> None:
    if intra_period < 1:
        raise CodecError(f"intra period must be >= 1, got {intra_period}\n  fix: use e.g. {DEFAULT_INTRA_PERIOD}")


def _check_vocab(model: EntropyModel, k: int) -> None:
    mk = getattr(model, "vocab_size", None)
    if mk is not None and int(mk) != k:
        raise CodecError(f"entropy model {model.name!r} predicts {mk} symbols but the tokens come from a "
                         f"{k}-code tokenizer\n  fix: use an entropy model trained on this tokenizer's tokens")


def _teacher_forced_logits(model: EntropyModel, frames: torch.Tensor, independent: bool, layout: FrameLayout,
                           device: torch.device) -> torch.Tensor:
    """(n, D·H·W, K) logits of a segment's frames, each position as the coder sees it, in one batched pass."""
    x = frames.to(device)
    batch = getattr(model, "batch_logits", None)
    if batch is None:
        return torch.stack([model.frame_logits(f, None if independent or j == 0 else x[j - 1], layout)
                            for j, f in enumerate(x)]).cpu()
    if independent:
        return batch(x, None).cpu()
    first = batch(x[:1], None)
    return (torch.cat([first, batch(x[1:], x[:-1])]) if len(x) > 1 else first).cpu()


def _code_segment(frames: torch.Tensor, model: EntropyModel, layout: FrameLayout, steps: list[torch.Tensor],
                  device: torch.device, independent: bool, adaptive: bool, enc=None, fam=None,
                  teacher_forced: bool = False) -> np.ndarray:
    """Code one segment's frames (n, D, H, W) with `enc` (None: only count) -> (n, D) float64 ideal code lengths
    in bits under the coder's integer frequencies: what `compress_tokens` estimates, frame by frame and depth by
    depth. teacher_forced (counting only): the logits of every position from one batched pass instead of step by
    step (equal to float tolerance, so the count may differ from the file's in the last bits)."""
    d, h, w = layout.depth, layout.height, layout.width
    cost = np.zeros((len(frames), d), dtype=np.float64)
    forced = _teacher_forced_logits(model, frames, independent, layout, device) if teacher_forced else None
    prev = None
    mixer = AdaptiveMixer(layout) if adaptive else None  # fresh at every segment: intra points decode alone
    for j, frame in enumerate(frames):
        flat = frame.reshape(-1)
        buf = torch.zeros(d * h * w, dtype=torch.int64)  # what the decoder knows: revealed tokens, zeros elsewhere
        known = torch.zeros(d * h * w, dtype=torch.bool)
        if mixer is not None:
            mixer.start_frame(None if prev is None else prev.numpy())
        for i, pos in enumerate(steps):
            if forced is None:
                weights = _step_weights(model, buf.view(d, h, w), known.view(d, h, w), prev, layout, i, pos, device,
                                        mixer)
            else:
                p = softmax64(forced[j, pos].float())
                weights = probs_to_weights(p if mixer is None else mixer.mix(p, pos.numpy(), buf.numpy(),
                                                                             known.numpy()))
            sym = flat[pos].numpy().astype(np.int32)
            if enc is not None:
                enc.encode(sym, fam, weights)  # one call: a categorical distribution per symbol (rows of weights)
            picked = weights[np.arange(len(sym)), sym] + 1.0
            cost[j] += np.bincount(pos.numpy() // (h * w), weights=PRECISION - np.log2(picked), minlength=d)
            if mixer is not None:
                mixer.update(sym)
            buf[pos] = flat[pos]
            known[pos] = True
        prev = None if independent else frame
    return cost


@torch.no_grad()
def coded_bits(tokens: torch.Tensor | np.ndarray, entropy_model: EntropyModel, vocab_size: int, *,
               intra_period: int = DEFAULT_INTRA_PERIOD, independent: bool = False, adaptive: bool = True,
               teacher_forced: bool = False) -> np.ndarray:
    """What `compress_tokens` would code, without writing a file: (T, D) float64 bits per frame and depth, the same
    steps, mixing and integer frequencies (the payload is within a few bytes of its sum). teacher_forced: every
    position's logits from one batched pass per segment (fast; what validation uses), equal to the step-by-step
    logits to float tolerance."""
    x = _as_tokens(tokens)
    t, d, h, w = x.shape
    _check_intra_period(intra_period)
    layout = FrameLayout(depth=d, height=h, width=w, vocab_size=vocab_size)
    _check_vocab(entropy_model, vocab_size)
    steps = _checked_schedule(entropy_model, layout)
    device = _model_device(entropy_model)
    parts = [_code_segment(x[s:s + intra_period], entropy_model, layout, steps, device, independent, adaptive,
                           teacher_forced=teacher_forced) for s in range(0, t, intra_period)]
    return np.concatenate(parts)


@torch.no_grad()
def compress_tokens(tokens: torch.Tensor | np.ndarray, entropy_model: EntropyModel, tokenizer_hash: bytes,
                    vocab_size: int, *, intra_period: int = DEFAULT_INTRA_PERIOD, independent: bool = False,
                    fps: float | Fraction | None = None, metadata: dict | None = None,
                    adaptive: bool = True) -> Compressed:
    """(T, H, W) or (T, D, H, W) tokens -> a `.vqf` file's bytes.

    independent: every frame is intra (images); otherwise frame t is conditioned on frame t-1 within its segment of
    `intra_period` frames. tokenizer_hash: 32 bytes (see `api.tokenizer_hash`). adaptive: mix the model's
    prediction with the segment's own token statistics (`adaptive`; recorded in the header, so the decoder follows).
    """
    x = _as_tokens(tokens)
    t, d, h, w = x.shape
    if len(tokenizer_hash) != 32:
        raise ValueError("tokenizer_hash must be 32 bytes (a SHA-256 digest)")
    _check_intra_period(intra_period)
    if int(x.min()) < 0 or int(x.max()) >= vocab_size:
        raise CodecError(f"tokens must lie in 0..{vocab_size - 1}, found {int(x.min())}..{int(x.max())}\n"
                         "  fix: pass the indices of the tokenizer whose codebook size you gave")
    if max(d, h, w) >= 2**16 or t >= 2**32:
        raise CodecError(f"{t} frames of {d}x{h}x{w} tokens do not fit the container (< 65536 per side)\n"
                         "  fix: split the input")
    _check_vocab(entropy_model, vocab_size)
    layout = FrameLayout(depth=d, height=h, width=w, vocab_size=vocab_size)
    steps = _checked_schedule(entropy_model, layout)
    device = _model_device(entropy_model)
    fam = _categorical()
    fr = Fraction(fps).limit_denominator(1001) if fps else Fraction(0)
    header = Header(tokenizer_hash=bytes(tokenizer_hash), entropy_hash=bytes.fromhex(entropy_model_hash(entropy_model)),
                    frames=t, depth=d, height=h, width=w, vocab_size=vocab_size, intra_period=intra_period,
                    independent=independent, adaptive=adaptive, fps=(fr.numerator, fr.denominator if fr else 0),
                    token_hash=tokens_hash(x.numpy()), metadata=dict(metadata or {}),
                    frame_crcs=[frame_crc(x[i].numpy()) for i in range(t)])
    payloads, bits = [], 0.0
    for s in range(header.num_segments):
        enc = constriction.stream.queue.RangeEncoder()
        frames = header.segment_frames(s)
        cost = _code_segment(x[frames.start:frames.stop], entropy_model, layout, steps, device, independent, adaptive,
                             enc, fam)
        bits += float(cost.sum())
        payloads.append(enc.get_compressed().astype("<u4").tobytes())
    data = pack(header, payloads)
    return Compressed(data=data, header_bytes=header.header_size, payload_bytes=len(data) - header.header_size,
                      estimate_bits=bits, frames=t, tokens=x.numel())


def read_header(data: bytes, name: str = "file") -> Header:
    """Parse and validate a file's header (see `container`)."""
    return unpack(data, name)


def check_models(header: Header, entropy_model: EntropyModel | None = None, tokenizer_hash: bytes | None = None,
                 name: str = "file") -> None:
    """Raise CodecError when the file was written with another tokenizer or entropy model."""
    if tokenizer_hash is not None and bytes(tokenizer_hash) != header.tokenizer_hash:
        raise CodecError(f"{name}: byte 16: the file was compressed with another tokenizer (sha256 "
                         f"{header.tokenizer_hash.hex()[:16]}..., given {bytes(tokenizer_hash).hex()[:16]}...)\n"
                         "  fix: decompress with the tokenizer that compressed it")
    if entropy_model is not None:
        eh = bytes.fromhex(entropy_model_hash(entropy_model))
        if eh != header.entropy_hash:
            raise CodecError(f"{name}: byte 48: the file was compressed with another entropy model (sha256 "
                             f"{header.entropy_hash.hex()[:16]}..., given {entropy_model.name!r} "
                             f"{eh.hex()[:16]}...)\n  fix: decompress with the entropy model that compressed it")


@torch.no_grad()
def decode_segment(data: bytes, header: Header, s: int, entropy_model: EntropyModel, name: str = "file"
                   ) -> torch.Tensor:
    """Decode segment s alone -> its frames' tokens (n, D, H, W) int64, each checked against its CRC."""
    if not 0 <= s < header.num_segments:
        raise CodecError(f"{name}: segment {s} does not exist (the file has {header.num_segments})")
    d, h, w = header.depth, header.height, header.width
    layout = FrameLayout(depth=d, height=h, width=w, vocab_size=header.vocab_size)
    _check_vocab(entropy_model, header.vocab_size)
    steps = _checked_schedule(entropy_model, layout)
    device = _model_device(entropy_model)
    fam = _categorical()
    words = segment_payload(data, header, s, name)
    off, length, _ = header.segments[s]
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
    except Exception as e:  # noqa: BLE001 - constriction reports bad streams with several exception types
        raise CodecError(f"{name}: bytes {off}..{off + length}: segment {s} is not a valid range-coded stream ({e})\n"
                         "  fix: the file is damaged; compress it again") from e
    frames = header.segment_frames(s)
    out = torch.empty(len(frames), d, h, w, dtype=torch.int64)
    prev = None
    mixer = AdaptiveMixer(layout) if header.adaptive else None
    for j, f in enumerate(frames):
        buf = torch.zeros(d * h * w, dtype=torch.int64)
        known = torch.zeros(d * h * w, dtype=torch.bool)
        if mixer is not None:
            mixer.start_frame(None if prev is None else prev.numpy())
        for i, pos in enumerate(steps):
            weights = _step_weights(entropy_model, buf.view(d, h, w), known.view(d, h, w), prev, layout, i,
                                    pos, device, mixer)
            try:
                sym = dec.decode(fam, weights)  # the step's n symbols in one call
            except Exception as e:  # noqa: BLE001
                raise CodecError(f"{name}: bytes {off}..{off + length}: range decoding of segment {s} failed at "
                                 f"frame {f} ({e})\n  fix: the file is damaged or belongs to another entropy model"
                                 ) from e
            buf[pos] = torch.from_numpy(np.asarray(sym, dtype=np.int64))
            known[pos] = True
            if mixer is not None:
                mixer.update(sym)
        frame = buf.view(d, h, w)
        if frame_crc(frame.numpy()) != header.frame_crcs[f]:
            raise CodecError(
                f"{name}: byte {header.frame_crc_offset(f)}: frame {f} decoded to tokens that do not match the "
                "checksum stored for it: the entropy model's arithmetic here differs from the encoder's (another "
                "machine, library version, device or thread count gave different logits), or the model differs\n"
                "  fix: decompress with the same entropy model on the same kind of machine (CPU, same torch/numpy) "
                "as the encoder")
        out[j] = frame
        prev = None if header.independent else frame
    return out


def decompress_tokens(data: bytes, entropy_model: EntropyModel, tokenizer_hash: bytes | None = None,
                      segments: Iterable[int] | None = None, name: str = "file") -> tuple[torch.Tensor, Header]:
    """A `.vqf` file's bytes -> ((T, D, H, W) int64 tokens, header). Every check in `container` applies.

    segments: decode only these (random access from any intra point); the tokens are then those frames only.
    """
    header = read_header(data, name)
    check_models(header, entropy_model, tokenizer_hash, name)
    which = list(range(header.num_segments)) if segments is None else list(segments)
    parts = [decode_segment(data, header, s, entropy_model, name) for s in which]
    tokens = torch.cat(parts) if parts else torch.empty(0, header.depth, header.height, header.width,
                                                        dtype=torch.int64)
    if segments is None and tokens_hash(tokens.numpy()) != header.token_hash:
        raise CodecError(f"{name}: byte 112: the decoded tokens do not match the file's token hash\n"
                         "  fix: decompress with the same entropy model on the same kind of machine as the encoder")
    return tokens, header


__all__ = ["Compressed", "CodecError", "DEFAULT_INTRA_PERIOD", "PRECISION", "check_models", "coded_bits",
           "compress_tokens", "decode_segment", "decompress_tokens", "read_header"]
