"""`model_args` of the user's model families that need more than a key-for-key copy, for both user formats.

    map_user_model_args(family, model_args, where="model_args") -> UserModelArgs

`family` is the native family the `model_type` resolved to. Returned: the native values (with the user's key each
came from), the keys the user's system accepted but never used (reported as "no effect"), and the keys handled,
so a reader skips them. The readers call `apply_user_model_args(builder, mapped)`.

Meanings, from the user's code:
- `vqvae2_optvq` (VQ-VAE-2 with Sinkhorn assignment): `in_channels, hidden_channels, res_channels, nb_res_layers,
  nb_levels, embed_dim, nb_entries, scaling_rates, epsilon, n_iters, normalize_mode, use_prob, beta, loss_q_type,
  use_proj`, `use_norm` (false only: the user's quantizer refused true), older names `input_channels, vocab_size,
  n_init, n_hid`; every other parameter of the user's
  model families (e.g. `group_count`, `commitment_cost`, `decay`) was silently dropped there -> no effect here.
  Family defaults: 3 levels, scaling_rates [8, 4, 2], res_channels 32. (The user's system fell back to the
  top-level `scaling_rates` or [4, 2], so its own `param.json` failed with 3 levels; vqforge reports that mismatch as
  an error naming both keys.)
- `dalle_vqvae` (the user's VqVae): `input_channels, n_init, vocab_size, commitment_cost, decay` shape the model;
  `group_count, n_hid, n_blk_per_group, output_channels` were accepted by the user's class but never reached its
  network -> no effect. With model_type `vqvaeoptvq` (variant "optvq" here) the same class was built with the OptVQ
  quantizer: `optvq_beta, optvq_use_proj` shape it, `decay, commitment_cost` never reached it -> no effect;
  `optvq_use_sinkhorn: false` (nearest-code OptVQ) and `optvq_num_head` > 1 are not available -> ConfigError.
  Without optvq the user's VqVae forced the EMA codebook, so the `optvq_*` keys had no effect there. `use_optvq`
  was overwritten by the model_type in the user's system -> no effect.
- `taming` (later format): `rvq_levels` (alias `num_quantizers`; the user's system let rvq_levels win silently, here
  two different values are an error) with `model_variant: EMAVQ` = the user's residual quantizer (one shared EMA
  codebook, prefix loss, keys quantize.embedding.*); with any other variant the user's system ignored it -> no effect.
  `model_variant: PQEMAVQ` with `pq_num_subspaces` (default 4), `pq_decay`, `pq_eps` -> product quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .mapping import NativeBuilder
from .parse import closest

OPTVQ_PARAMS = ("in_channels", "hidden_channels", "res_channels", "nb_res_layers", "nb_levels", "embed_dim",
                "nb_entries", "scaling_rates", "epsilon", "n_iters", "normalize_mode", "use_prob", "beta",
                "loss_q_type", "use_proj")
OLD_NAMES = {"input_channels": "in_channels", "vocab_size": "nb_entries", "n_init": "embed_dim",
             "n_hid": "hidden_channels"}
DALLE_PARAMS = ("input_channels", "n_init", "vocab_size", "commitment_cost", "decay")
DALLE_INERT = ("group_count", "n_hid", "n_blk_per_group", "output_channels")
DALLE_OPTVQ = ("optvq_beta", "optvq_use_proj", "optvq_use_sinkhorn", "optvq_num_head", "use_optvq")
TAMING_EXTRA = ("rvq_levels", "num_quantizers", "pq_num_subspaces", "pq_decay", "pq_eps")
# keys a reader maps the same way for every family
GENERIC = ("model_variant", "lossconfig", "ckpt_path")
# every parameter name of the user's model families: such a key on another family is "no effect", not a typo
ALL_USER_PARAMS = tuple(dict.fromkeys(OPTVQ_PARAMS + ("use_norm",) + tuple(OLD_NAMES) + DALLE_PARAMS + DALLE_INERT
                                      + DALLE_OPTVQ + TAMING_EXTRA + ("n_embed", "ddconfig", "quantizer", "eps")))


@dataclass
class UserModelArgs:
    values: list[tuple[str, Any, str, str | None]] = field(default_factory=list)  # (native path, value, key, why)
    inert: list[tuple[str, str]] = field(default_factory=list)  # (user key, why it has no effect)
    handled: set[str] = field(default_factory=set)  # model_args keys consumed here


def map_user_model_args(family: str, args: dict, where: str = "model_args", variant: str | None = None) -> UserModelArgs:
    """Map the `model_args` of `family` (see the module docstring); `variant` is the taming variant, if any."""
    out = UserModelArgs()
    if family == "vqvae2_optvq":
        _optvq(args, where, out)
    elif family == "dalle_vqvae":
        _dalle(args, where, out, optvq=variant == "optvq")
    elif family == "taming":
        _taming_extra(args, where, out, variant or "VQModel")
    return out


def apply_user_model_args(b: NativeBuilder, mapped: UserModelArgs) -> None:
    """Put the mapped values into the builder and note the keys without effect."""
    for path, value, src, why in mapped.values:
        b.put(path, value, src, why=why, fix=None if why is None else f"remove {src} (it repeats another key)")
    for src, why in mapped.inert:
        b.note(f"{src}: has no effect: {why}")


def _unknown(key: str, known: tuple[str, ...], where: str, family: str) -> ConfigError:
    near = closest(key, list(known))
    fix = f"did you mean {near!r}?" if near else f"use one of {', '.join(known)}"
    return ConfigError(f"{where}.{key}", f"unknown parameter of model family {family}", fix)


def _optvq(args: dict, where: str, out: UserModelArgs) -> None:
    for key, value in args.items():
        if key in GENERIC:
            continue
        out.handled.add(key)
        if key == "use_norm":
            # the user's quantizer refused use_norm: true (an assert); false is the only behaviour there is
            if value is not False:
                raise ConfigError(f"{where}.use_norm", f"{value!r}: l2-normalised codes are not supported (the "
                                  "previous system refused them as well)", 'set "use_norm": false or remove it')
        elif key in OPTVQ_PARAMS:
            out.values.append((f"model.vqvae2_optvq.{key}", value, f"{where}.{key}", None))
        elif key in OLD_NAMES:
            continue  # after the new names (below), so a clash names the older key
        elif key in ALL_USER_PARAMS:
            out.inert.append((f"{where}.{key}", "the VQ-VAE-2 OptVQ model does not use it (the previous system "
                              "dropped it silently)"))
        else:
            raise _unknown(key, OPTVQ_PARAMS + ("use_norm",) + tuple(OLD_NAMES), where, "vqvae2_optvq")
    for old, new in OLD_NAMES.items():
        if old in args:
            out.values.append((f"model.vqvae2_optvq.{new}", args[old], f"{where}.{old}",
                               f"{old} is the older name of {new}"))


def _dalle(args: dict, where: str, out: UserModelArgs, optvq: bool = False) -> None:
    for key, value in args.items():
        if key in GENERIC:
            continue
        out.handled.add(key)
        if key in DALLE_PARAMS:
            if optvq and key in ("decay", "commitment_cost"):
                out.inert.append((f"{where}.{key}", "model_type vqvaeoptvq uses the OptVQ quantizer, which has no "
                                  "EMA codebook and no commitment cost (its weight is optvq_beta)"))
            else:
                out.values.append((f"model.dalle_vqvae.{key}", value, f"{where}.{key}", None))
        elif key in DALLE_INERT:
            out.inert.append((f"{where}.{key}", "the VqVae network (VQGAN-style encoder/decoder) never reads it, in "
                              "the previous system either"))
        elif key == "use_optvq":
            out.inert.append((f"{where}.{key}", "the model_type decides the quantizer (vqvaeoptvq: OptVQ, VqVae: "
                              "EMA codebook), as it overrode use_optvq in the previous system"))
        elif key in DALLE_OPTVQ and not optvq:
            out.inert.append((f"{where}.{key}", "model_type VqVae builds the EMA codebook, not OptVQ (use model_type "
                              "vqvaeoptvq for the OptVQ quantizer)"))
        elif key in ("optvq_beta", "optvq_use_proj"):
            out.values.append((f"model.dalle_vqvae.{key}", value, f"{where}.{key}", None))
        elif key == "optvq_use_sinkhorn":
            if value is not True:
                raise ConfigError(f"{where}.{key}", f"{value!r}: the OptVQ quantizer without Sinkhorn assignment is "
                                  "not available in vqforge", 'set "optvq_use_sinkhorn": true or remove it')
        elif key == "optvq_num_head":
            if value != 1:
                raise ConfigError(f"{where}.{key}", f"{value!r}: multi-head OptVQ is not available in vqforge",
                                  'set "optvq_num_head": 1 or remove it')
        elif key in ALL_USER_PARAMS:
            out.inert.append((f"{where}.{key}", "the VqVae model does not use it"))
        else:
            raise _unknown(key, DALLE_PARAMS + DALLE_INERT + (DALLE_OPTVQ if optvq else ()), where,
                           "dalle_vqvae (vqvaeoptvq)" if optvq else "dalle_vqvae (VqVae)")


def _taming_extra(args: dict, where: str, out: UserModelArgs, variant: str) -> None:
    levels_keys = [k for k in ("rvq_levels", "num_quantizers") if k in args]
    out.handled.update(k for k in TAMING_EXTRA if k in args)
    if levels_keys:
        if variant == "EMAVQ":
            for k in levels_keys:
                out.values.append(("model.quantizer.rvq_levels", args[k], f"{where}.{k}",
                                   "num_quantizers is another name of rvq_levels" if len(levels_keys) > 1 else None))
            depth = args[levels_keys[0]]
            if isinstance(depth, int) and not isinstance(depth, bool) and depth > 1:
                # the user's ResidualEMAVectorQuantizer: one shared EMA codebook, prefix loss, keys quantize.embedding.*
                src = f"{where}.{levels_keys[0]}"
                out.values.append(("model.quantizer.shared_codebook", True, src, None))
                out.values.append(("model.quantizer.rvq_loss", "prefix", src, None))
        else:
            for k in levels_keys:
                out.inert.append((f"{where}.{k}", f"model_variant is {variant}; the previous system built a residual "
                                  "quantizer only for EMAVQ and ignored it otherwise (use model_variant EMAVQ)"))
    pq = {"pq_num_subspaces": "num_subspaces", "pq_decay": "decay", "pq_eps": "eps"}
    for key, native in pq.items():
        if key not in args:
            continue
        if variant == "PQEMAVQ":
            out.values.append((f"model.quantizer.{native}", args[key], f"{where}.{key}", None))
        else:
            out.inert.append((f"{where}.{key}", f"model_variant is {variant}; product-quantization settings apply "
                              "to PQEMAVQ only"))


__all__ = ["ALL_USER_PARAMS", "TAMING_EXTRA", "UserModelArgs", "apply_user_model_args", "map_user_model_args"]
