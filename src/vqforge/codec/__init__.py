"""Real bitstreams from vqforge tokens: range coding with an entropy model into a documented container (`.vqf`).

- `compress_tokens` / `decompress_tokens`: token arrays <-> file bytes; `coded_bits`: their cost without a file
  (coder.py)
- `compress` / `decompress`: images and videos <-> files, through a tokenizer (api.py)
- the file format: container.py; logits -> integer frequencies: frequencies.py
"""

from .api import Decompressed, compress, compress_frames, decode_tokens, decompress, encode_images, tokenizer_hash
from .coder import Compressed, coded_bits, compress_tokens, decode_segment, decompress_tokens, read_header
from .container import CodecError, Header

__all__ = [
    "CodecError",
    "Compressed",
    "Decompressed",
    "Header",
    "compress",
    "compress_frames",
    "coded_bits",
    "compress_tokens",
    "decode_segment",
    "decode_tokens",
    "decompress",
    "decompress_tokens",
    "encode_images",
    "read_header",
    "tokenizer_hash",
]
