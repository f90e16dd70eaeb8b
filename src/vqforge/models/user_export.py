"""Write a trained tokenizer back in the layout of the user's previous system, for its downstream video codec.

    vqforge export RUN_DIR|CKPT --out DIR --format user

DIR/model.pt       torch.save({"model": state_dict, "config": <config.json's content>}) — the `.pt` layout the user's
                   later trainers wrote (`ckpt["model"]`), which their codec's I-frame wrapper reads
                   (`ckpt["state_dict"]`, `ckpt["model"]` or the bare dict)
DIR/config.json    {"model_type": ..., "model_args": {...}} in the user's later format: model_variant, n_embed,
                   embed_dim, ddconfig and, where they apply, rvq_levels and pq_num_subspaces / pq_decay / pq_eps

The state dict holds the tokenizer with the user's key names (`encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*`, `quantize.*`; for the shared-codebook RVQ `quantize.embedding.{weight,cluster_size,embed_avg}`).
vqforge-only state (codebook-maintenance counters) is left out; the previous system's loss/discriminator keys
(`loss.*`) are not written: the codec loads tokenizer weights only. Quantizers the previous system never had (a
residual VQ with per-level codebooks or the per-level loss, with gradient codebooks) are refused with the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..config.parse import to_dict
from ..config.schema import Config
from ..errors import CheckpointError
from ..quantizers import (EMAVectorQuantizer, GumbelQuantizer, ProductEMAQuantizer, ResidualEMAVectorQuantizer,
                          VectorQuantizer)

USER_QUANTIZERS = (VectorQuantizer, EMAVectorQuantizer, GumbelQuantizer, ResidualEMAVectorQuantizer,
                   ProductEMAQuantizer)


def user_model_args(cfg: Config) -> dict:
    """The later-format `model_args` that rebuild this model in the user's system."""
    m = cfg.model
    args: dict = {"model_variant": m.variant, "n_embed": m.n_embed, "embed_dim": m.embed_dim,
                  "ddconfig": to_dict(m.ddconfig)}
    if m.quantizer.rvq_levels > 1:
        args["rvq_levels"] = m.quantizer.rvq_levels
    if m.variant == "PQEMAVQ":
        args.update(pq_num_subspaces=m.quantizer.num_subspaces, pq_decay=m.quantizer.decay, pq_eps=m.quantizer.eps)
    return args


def user_state_dict(model: nn.Module, cfg: Config) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors under the user's key names; raises CheckpointError for models the user's system had
    no layout for."""
    if cfg.model.family != "taming":
        raise CheckpointError(f"--format user writes the previous system's taming-family checkpoints (VQModel, EMAVQ, "
                              f"GumbelVQ, its residual EMAVQ and PQEMAVQ); this model is family {cfg.model.family}\n"
                              "  fix: export it in vqforge's format (leave out --format)")
    quantize = getattr(model, "quantize", None)
    if not isinstance(quantize, USER_QUANTIZERS):
        raise CheckpointError(
            f"--format user: this model's quantizer ({type(quantize).__name__}) has no counterpart in the previous "
            "system, whose residual VQ shares one EMA codebook with the prefix loss\n"
            "  fix: train with variant EMAVQ, quantizer.shared_codebook: true and quantizer.rvq_loss: prefix (what "
            "rvq_levels in the previous system's configs means), or export in vqforge's format")
    q = cfg.model.quantizer
    if q.codebook_dim is not None or q.use_cosine_sim:
        raise CheckpointError("--format user: factorised (codebook_dim) or cosine-similarity (use_cosine_sim) codes "
                              "have no counterpart in the previous system, which would decode them wrongly\n"
                              "  fix: export in vqforge's format (leave out --format)")
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".maintenance." not in k
            and not k.startswith("maintenance.")}


def save_user_checkpoint(model: nn.Module, cfg: Config, out_dir: str | Path) -> Path:
    """Write DIR/model.pt and DIR/config.json (see the module docstring); returns the .pt path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = user_state_dict(model, cfg)
    config = {"model_type": "TamingVQGAN", "model_args": user_model_args(cfg)}
    pt = out / "model.pt"
    tmp = out / ".model.pt.tmp"
    torch.save({"model": state, "config": config}, tmp)
    os.replace(tmp, pt)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return pt
