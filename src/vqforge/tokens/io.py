"""The indices file that `vqforge encode` writes and `vqforge decode` reads, and the hashes that tie it to a model.

- `.safetensors`: tensor "indices" (N, h, w) or (N, D, h, w) for residual VQ, or "indices_l{i}" (N, h_i, w_i) per
  level for hierarchical models (coarsest first), int32; metadata key "vqforge" holds the JSON below.
- `.npy`: the single index tensor (int32), and the JSON metadata in a sidecar file next to it (`<name>.json`).
  Hierarchical models need .safetensors (their levels have different sizes).
Metadata: format/version, model identity (family, variant, sha256 of the architecture fields of the config, sha256 of
the weights, the path given), layout, codebook sizes, depth, input shape (N, C, H, W), frame count, and one entry per
source file (name, kind, first frame, frame count, fps for videos). N counts frames: an image is one, a video all of
its frames, in input order.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config.parse import to_dict
from ..config.schema import HIERARCHICAL_FAMILIES, Config
from ..errors import CheckpointError, ConfigError, DataError
from ..eval.codebook import Indices

INDICES_FORMAT = "vqforge-indices"
INDICES_VERSION = 1
INDICES_SUFFIXES = (".safetensors", ".npy")


def architecture_hash(cfg: Config) -> str:
    """sha256 of the config fields that decide what an index means (architecture and codebook layout)."""
    m = cfg.model
    fields = {"family": m.family, "variant": m.variant}
    if m.family in HIERARCHICAL_FAMILIES:
        fields[m.family] = to_dict(m.arch)
    elif m.family == "dalle_vqvae":
        fields["dalle_vqvae"] = to_dict(m.dalle_vqvae)
    else:
        net = {"patch": to_dict(m.patch)} if m.family == "patch" else {"ddconfig": to_dict(m.ddconfig)}
        fields.update(n_embed=m.n_embed, embed_dim=m.embed_dim, **net,
                      rvq_levels=m.quantizer.rvq_levels, shared_codebook=m.quantizer.shared_codebook)
        if m.variant == "PQEMAVQ":
            fields["num_subspaces"] = m.quantizer.num_subspaces
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def weights_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model: nn.Module, cfg: Config, source: str) -> dict:
    return {"family": cfg.model.family, "variant": cfg.model.variant, "config_sha256": architecture_hash(cfg),
            "weights_sha256": weights_hash(model), "source": source}


def check_model_matches(meta: dict, model: nn.Module, cfg: Config, file: Path) -> None:
    """CheckpointError when `file` was encoded by another architecture; a warning when only the weights differ."""
    ident = meta.get("model")
    if not ident:
        return
    if ident.get("config_sha256") != architecture_hash(cfg):
        raise CheckpointError(
            f"{file}: was encoded by a different model architecture ({ident.get('family')}/{ident.get('variant')} "
            f"from {ident.get('source')!r}); its indices mean nothing to this model\n"
            f"  fix: decode with the model that encoded it ({ident.get('source')})")
    if ident.get("weights_sha256") and ident["weights_sha256"] != weights_hash(model):
        warnings.warn(f"{file}: was encoded with other weights of the same architecture ({ident.get('source')!r}); "
                      "decoding anyway", stacklevel=2)


def check_indices_path(path: Path, cfg: Config, field: str = "--out") -> None:
    """ConfigError before any work when `path` is not a file type this model's indices can be written to."""
    suffix = path.suffix.lower()
    if suffix not in INDICES_SUFFIXES:
        raise ConfigError(field, f"unknown indices file type {path.suffix or '(none)'!r}",
                          "end the file name with .safetensors or .npy")
    if suffix == ".npy" and cfg.model.family in HIERARCHICAL_FAMILIES:
        _npy_hierarchical(field)


def _npy_hierarchical(field: str) -> None:
    raise ConfigError(field, "this model is hierarchical: its index maps have different sizes per level "
                      "and do not fit one .npy array", "write a .safetensors file instead")


def _index_dtype(num_codes: list[int]) -> torch.dtype:
    if max(num_codes) > 2**31 - 1:
        raise ValueError("codebook too large for int32 indices")
    return torch.int32


def save_indices(path: str | Path, indices: Indices, meta: dict) -> list[Path]:
    """Write an indices file (.safetensors, or .npy + .json sidecar); returns the files written."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = _index_dtype(meta["num_codes"])
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if isinstance(indices, (list, tuple)):
            tensors = {f"indices_l{i}": t.to(dtype).contiguous() for i, t in enumerate(indices)}
        else:
            tensors = {"indices": indices.to(dtype).contiguous()}
        save_file(tensors, str(path), metadata={"format": INDICES_FORMAT, "vqforge": json.dumps(meta)})
        return [path]
    if suffix == ".npy":
        if isinstance(indices, (list, tuple)):
            _npy_hierarchical("--out")
        sidecar = path.with_suffix(".json")
        np.save(path, indices.to(dtype).numpy())
        sidecar.write_text(json.dumps(meta, indent=2) + "\n")
        return [path, sidecar]
    raise ConfigError("--out", f"unknown indices file type {path.suffix or '(none)'!r}",
                      "end the file name with .safetensors or .npy")


def load_indices(path: str | Path) -> tuple[Indices, dict]:
    """Read an indices file written by `save_indices` -> (int64 indices, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: does not exist\n  fix: pass the file written by `vqforge encode`")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise DataError(f"{path}: not a readable safetensors file ({e})\n  fix: re-run `vqforge encode`") from e
        if raw_meta.get("format") != INDICES_FORMAT or "vqforge" not in raw_meta:
            raise DataError(f"{path}: not a vqforge indices file (no '{INDICES_FORMAT}' metadata)\n"
                            "  fix: pass a file written by `vqforge encode`")
        meta = json.loads(raw_meta["vqforge"])
        if "indices" in tensors:
            return tensors["indices"].long(), meta
        levels = sorted((k for k in tensors if k.startswith("indices_l")), key=lambda k: int(k[len("indices_l"):]))
        if not levels:
            raise DataError(f"{path}: holds no 'indices' tensor\n  fix: re-run `vqforge encode`")
        return [tensors[k].long() for k in levels], meta
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})\n  fix: re-run `vqforge encode`") from e
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
        else:
            warnings.warn(f"{sidecar} is missing: decoding without metadata (frames are named by number, the "
                          "model is not checked)", stacklevel=2)
            meta = {}
        return torch.from_numpy(arr.astype(np.int64)), meta
    raise ConfigError("FILE", f"unknown indices file type {path.suffix or '(none)'!r}",
                      "pass the .safetensors or .npy file written by `vqforge encode`")
