"""Writes tests/golden/fid_features.safetensors: InceptionV3 pool features (2048) of one fixed 40x56 RGB image.

The features are computed twice and must agree within 1e-3 before anything is written:
  1. through vqforge (`vqforge.eval.fid.load_inception()`: [-1, 1] -> uint8 -> TF1 resize -> (v - 128) / 128);
  2. through the same TorchScript network with a preprocessing written here from TF-FID's documented rule:
     uint8 image as float, `tf.image.resize_bilinear(..., [299, 299])` with align_corners=False (TF1: the source
     coordinate of output pixel i is i * in / out, neighbours floor and floor + 1 clamped to the edge, linear
     weights), resize before the scaling, then (v - 128) / 128. Implemented as two interpolation matrices in float64.
The stored vector is (1). Run from the repository root:  PYTHONPATH=$PWD/src python tests/golden/make_fid_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def fixed_image() -> np.ndarray:
    """(3, 40, 56) uint8: smooth ramps, a sinusoid and a hard edge (a non-square image exercises both axes)."""
    y, x = np.mgrid[0:40, 0:56].astype(np.float64)
    r = 255 * x / 55
    g = 127.5 + 120 * np.sin(x / 5.0) * np.cos(y / 7.0)
    b = np.where(x + y > 48, 230.0, 25.0)
    return np.clip(np.round(np.stack([r, g, b])), 0, 255).astype(np.uint8)


def tf1_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = i * n_in / n_out
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


def independent_features(net: torch.jit.ScriptModule, img: np.ndarray) -> torch.Tensor:
    v = img.astype(np.float64)
    mh, mw = tf1_resize_matrix(v.shape[1], 299), tf1_resize_matrix(v.shape[2], 299)
    v = np.einsum("oh,chw,pw->cop", mh, v, mw)
    v = (v - 128.0) / 128.0
    with torch.no_grad():
        return net(torch.from_numpy(v).float()[None]).reshape(-1).float()


def main() -> None:
    from vqforge.eval import fid

    torch.set_num_threads(1)
    img = fixed_image()
    path, reason = fid.find_inception()
    assert path is not None, reason
    net, _ = fid.load_inception(path)
    x = torch.from_numpy(img).float()[None] / 127.5 - 1.0
    ours = net(x)[0]
    theirs = independent_features(torch.jit.load(str(path), map_location="cpu").eval(), img)
    diff = float((ours - theirs).abs().max())
    print(f"max |vqforge - independent| = {diff:.3g}; feature norm {float(ours.norm()):.4f}")
    assert diff <= 1e-3
    out = Path(__file__).with_name("fid_features.safetensors")
    save_file({"image": torch.from_numpy(img), "features": ours.contiguous()}, str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
