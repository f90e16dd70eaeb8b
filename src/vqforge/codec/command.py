"""`vqforge compress` and `vqforge decompress`."""

from __future__ import annotations

import argparse

from .api import compress, decompress


def compress_main(args: argparse.Namespace) -> int:
    c = compress(args.tokenizer, args.entropy_model, list(args.inputs), args.out, resolution=args.resolution,
                 depth=args.depth, intra_period=args.intra_period, adaptive=args.adaptive)
    print(f"compressed {c.frames} frames ({c.tokens} tokens) -> {args.out}: {c.total_bytes} bytes "
          f"(header {c.header_bytes}, payload {c.payload_bytes}; model estimate {c.estimate_bits / 8:.1f} bytes "
          f"+ header), {c.bits_per_token:.3f} bits per token")
    return 0


def decompress_main(args: argparse.Namespace) -> int:
    r = decompress(args.tokenizer, args.entropy_model, args.file, args.out, depth=args.depth)
    print(f"decoded {r.tokens.shape[0]} frames -> {', '.join(map(str, r.written))}")
    return 0


def rd_main(args: argparse.Namespace) -> int:
    from .rd import rd_command

    return rd_command(args)
