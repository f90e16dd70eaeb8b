"""Tokens: images and videos to index maps and back (`frames`), the indices file format and model hashes (`io`),
and the `encode` / `decode` commands (`command`)."""

from .frames import crop_sizes, decode_frames, encode_frames, input_frames, load_model
from .io import architecture_hash, load_indices, model_identity, save_indices, weights_hash

__all__ = ["crop_sizes", "decode_frames", "encode_frames", "input_frames", "load_model",
           "architecture_hash", "load_indices", "model_identity", "save_indices", "weights_hash"]
