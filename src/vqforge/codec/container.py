"""The vqforge compressed-token container (`.vqf`), version 1.

All integers are little-endian. Offsets are from the start of the file.

    offset  size  field
    0       8     magic b"\\x89VQF\\r\\n\\x1a\\n" (a binary marker; text-mode copies break it visibly)
    8       2     u16 version (1)
    10      2     u16 flags: bit 0 = frames are independent (images: every frame is intra);
                  bit 1 = adaptive mixing (`adaptive.ADAPTIVE_V1`: the model's prediction mixed with the
                  segment's token statistics); other bits 0
    12      4     u32 header size = byte offset of the first segment
    16      32    SHA-256 of the tokenizer (its architecture config hash and its weights hash, see `tokenizer_hash`)
    48      32    SHA-256 of the entropy model (`vqforge.entropy.entropy_model_hash`)
    80      4     u32 T, frame count
    84      2     u16 D, residual depths coded
    86      2     u16 H, token rows
    88      2     u16 W, token columns
    90      2     u16 coder precision in bits (24)
    92      4     u32 K, vocabulary size
    96      4     u32 fps numerator   (0 for images)
    100     4     u32 fps denominator (0 for images)
    104     4     u32 intra period P: frames per segment; the first frame of each segment is intra
    108     4     u32 S, segment count = ceil(T / P)
    112     16    first 16 bytes of SHA-256 over all tokens (int32 little-endian, (T, D, H, W) C order)
    128     4     u32 M, metadata length
    132     M     metadata: UTF-8 JSON object (sources: file names, kinds, frame counts; input resolution)
    132+M   16·S  segment table, per segment: u64 byte offset, u32 byte length, u32 CRC-32 of the segment's bytes
    ...     4·T   frame table, per frame: u32 CRC-32 of its tokens (int32 little-endian, (D, H, W) C order)
    ...     4     u32 CRC-32 of every header byte before it
    header  ...   segments, back to back: segment s holds frames [s·P, min((s+1)·P, T)) as one range-coded stream
                  (constriction's queue.RangeEncoder, 32-bit words, stored little-endian)

Inside a segment every frame is coded with the entropy model's steps (`schedule`); a frame is conditioned on the
previous frame of its segment (none for the segment's first frame, and none at all for independent frames), so a
decoder can start at any segment. The file ends exactly where the last segment ends.

Checks on reading, each reported with the byte offset: the magic, the version, the header CRC, the table's
consistency with the file size (truncation), each segment's CRC (corruption), the model hashes (a different
tokenizer or entropy model), and after decoding each frame's token CRC and the overall token hash (a model or
machine whose arithmetic differs from the encoder's).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import VQForgeError

MAGIC = b"\x89VQF\r\n\x1a\n"
VERSION = 1
FLAG_INDEPENDENT = 1
FLAG_ADAPTIVE = 2
KNOWN_FLAGS = FLAG_INDEPENDENT | FLAG_ADAPTIVE
_FIXED = struct.Struct("<8sHHI32s32sIHHHHIIIII16sI")  # everything up to and including the metadata length
FIXED_SIZE = _FIXED.size  # 132
_SEGMENT = struct.Struct("<QII")
TOKEN_HASH_BYTES = 16


class CodecError(VQForgeError):
    """A compressed file cannot be read or decoded, or does not belong to the given models."""


@dataclass
class Header:
    tokenizer_hash: bytes  # 32 bytes
    entropy_hash: bytes  # 32 bytes
    frames: int  # T
    depth: int  # D
    height: int  # H
    width: int  # W
    vocab_size: int  # K
    intra_period: int  # P
    independent: bool  # images: every frame intra
    adaptive: bool = False  # adaptive mixing (flag bit 1)
    fps: tuple[int, int] = (0, 0)  # (numerator, denominator); (0, 0) when not a video
    precision: int = 24
    token_hash: bytes = b"\0" * TOKEN_HASH_BYTES
    metadata: dict[str, Any] = field(default_factory=dict)
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, length, crc32)
    frame_crcs: list[int] = field(default_factory=list)
    header_size: int = 0  # filled by pack/unpack

    @property
    def num_segments(self) -> int:
        return -(-self.frames // self.intra_period)

    def segment_frames(self, s: int) -> range:
        return range(s * self.intra_period, min((s + 1) * self.intra_period, self.frames))

    def frame_table_offset(self) -> int:
        return self.header_size - 4 - 4 * self.frames

    def frame_crc_offset(self, t: int) -> int:
        """Byte offset in the file of frame t's token CRC."""
        return self.frame_table_offset() + 4 * t


def token_bytes(tokens: np.ndarray) -> bytes:
    """The canonical bytes of tokens for checksums: int32 little-endian, C order."""
    return np.ascontiguousarray(tokens, dtype="<i4").tobytes()


def frame_crc(tokens: np.ndarray) -> int:
    return zlib.crc32(token_bytes(tokens))


def tokens_hash(tokens: np.ndarray) -> bytes:
    return hashlib.sha256(token_bytes(tokens)).digest()[:TOKEN_HASH_BYTES]


def header_size_for(frames: int, segments: int, metadata_len: int) -> int:
    return FIXED_SIZE + metadata_len + _SEGMENT.size * segments + 4 * frames + 4


def pack(h: Header, payloads: list[bytes]) -> bytes:
    """The whole file: header (with its tables filled in from `payloads`, one per segment) + segments."""
    if len(payloads) != h.num_segments:
        raise ValueError(f"{len(payloads)} segments for {h.num_segments} expected")
    meta = json.dumps(h.metadata, sort_keys=True, separators=(",", ":")).encode()
    size = header_size_for(h.frames, len(payloads), len(meta))
    h.header_size = size
    segs, off = [], size
    for p in payloads:
        segs.append((off, len(p), zlib.crc32(p)))
        off += len(p)
    h.segments = segs
    flags = (FLAG_INDEPENDENT if h.independent else 0) | (FLAG_ADAPTIVE if h.adaptive else 0)
    head = _FIXED.pack(MAGIC, VERSION, flags, size, h.tokenizer_hash, h.entropy_hash, h.frames, h.depth, h.height,
                       h.width, h.precision, h.vocab_size, h.fps[0], h.fps[1], h.intra_period, len(payloads),
                       h.token_hash, len(meta))
    body = head + meta + b"".join(_SEGMENT.pack(*s) for s in segs) + struct.pack(f"<{h.frames}I", *h.frame_crcs)
    body += struct.pack("<I", zlib.crc32(body))
    if len(body) != size:
        raise AssertionError("header size mismatch")  # internal invariant
    return body + b"".join(payloads)


def _fail(offset: int, problem: str, fix: str) -> CodecError:
    return CodecError(f"byte {offset}: {problem}\n  fix: {fix}")


def unpack(data: bytes, name: str = "file") -> Header:
    """Parse and validate the header of a complete file. Raises CodecError naming the byte offset of the problem."""
    n = len(data)
    m = min(n, len(MAGIC))
    if n == 0 or bytes(data[:m]) != MAGIC[:m]:
        raise CodecError(f"{name}: byte 0: not a vqforge compressed file (its first bytes are "
                         f"{bytes(data[:8])!r}, expected {MAGIC!r})\n"
                         "  fix: pass a file written by `vqforge compress`")
    if n < FIXED_SIZE:
        raise CodecError(f"{name}: byte {n}: the file ends inside its {FIXED_SIZE}-byte fixed header (truncated)\n"
                         "  fix: the file is incomplete; copy or compress it again")
    (magic, version, flags, size, tok_h, ent_h, t, d, hh, ww, precision, k, fps_n, fps_d, period, nseg, thash,
     mlen) = _FIXED.unpack_from(data, 0)
    if version != VERSION:
        raise CodecError(f"{name}: byte 8: container version {version}; this vqforge reads version {VERSION}\n"
                         "  fix: decompress it with the vqforge version that wrote it")
    if size > n:
        raise CodecError(f"{name}: byte {n}: the file ends inside its {size}-byte header (truncated, or the "
                         "header-size field at byte 12 is corrupted)\n"
                         "  fix: the file is incomplete or damaged; copy or compress it again")
    (stored_crc,) = struct.unpack_from("<I", data, size - 4) if size >= FIXED_SIZE + 4 else (None,)
    if stored_crc is None or zlib.crc32(data[:size - 4]) != stored_crc:
        raise CodecError(f"{name}: byte {max(size - 4, 12)}: the header checksum does not match its bytes "
                         f"0..{size - 4} (the header is corrupted)\n  fix: the file is damaged; compress it again")
    # the header is intact from here on: remaining checks catch files written wrongly, not damage
    if flags & ~KNOWN_FLAGS:
        raise CodecError(f"{name}: byte 10: unknown flags 0x{flags:04x} (this vqforge knows 0x{KNOWN_FLAGS:04x})\n"
                         "  fix: decompress it with the vqforge version that wrote it")
    if t < 1 or d < 1 or hh < 1 or ww < 1 or k < 2 or period < 1 or precision != 24:
        raise CodecError(f"{name}: byte 80: invalid shape fields T={t} D={d} H={hh} W={ww} K={k} P={period} "
                         f"precision={precision}\n  fix: the file was not written by `vqforge compress`")
    if nseg != -(-t // period) or size != header_size_for(t, nseg, mlen):
        raise CodecError(f"{name}: byte 108: {nseg} segments / header size {size} do not fit T={t}, P={period}\n"
                         "  fix: the file was not written by `vqforge compress`")
    try:
        meta = json.loads(data[FIXED_SIZE:FIXED_SIZE + mlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"{name}: byte {FIXED_SIZE}: metadata is not JSON ({e})\n"
                         "  fix: the file was not written by `vqforge compress`") from None
    pos = FIXED_SIZE + mlen
    segs = [_SEGMENT.unpack_from(data, pos + _SEGMENT.size * i) for i in range(nseg)]
    pos += _SEGMENT.size * nseg
    crcs = list(struct.unpack_from(f"<{t}I", data, pos))
    expected = size
    for i, (off, length, _) in enumerate(segs):
        if off != expected or length % 4:
            raise CodecError(f"{name}: byte {FIXED_SIZE + mlen + _SEGMENT.size * i}: segment {i} table entry "
                             f"(offset {off}, length {length}) is inconsistent\n"
                             "  fix: the file was not written by `vqforge compress`")
        expected = off + length
    if expected > n:
        s = next(i for i, (off, length, _) in enumerate(segs) if off + length > n)
        raise CodecError(f"{name}: byte {n}: the file is truncated: segment {s} (frames "
                         f"{s * period}..{min((s + 1) * period, t) - 1}) needs bytes {segs[s][0]}..{expected}, "
                         f"the file has {n} bytes\n  fix: the file is incomplete; copy or compress it again")
    if expected < n:
        raise CodecError(f"{name}: byte {expected}: {n - expected} unexpected bytes after the last segment\n"
                         "  fix: the file was appended to or is not one vqforge file; compress it again")
    return Header(tokenizer_hash=tok_h, entropy_hash=ent_h, frames=t, depth=d, height=hh, width=ww, vocab_size=k,
                  intra_period=period, independent=bool(flags & FLAG_INDEPENDENT),
                  adaptive=bool(flags & FLAG_ADAPTIVE), fps=(fps_n, fps_d),
                  precision=precision, token_hash=thash, metadata=meta, segments=segs, frame_crcs=crcs,
                  header_size=size)


def segment_payload(data: bytes, h: Header, s: int, name: str = "file") -> np.ndarray:
    """Segment s's bytes as the coder's uint32 words, after checking its CRC."""
    off, length, crc = h.segments[s]
    chunk = data[off:off + length]
    if zlib.crc32(chunk) != crc:
        fr = h.segment_frames(s)
        raise CodecError(f"{name}: bytes {off}..{off + length}: segment {s} (frames {fr.start}..{fr.stop - 1}) is "
                         "corrupted (its CRC-32 does not match the header's)\n"
                         "  fix: the file is damaged; compress it again (other segments still decode)")
    return np.frombuffer(chunk, dtype="<u4").astype(np.uint32)
