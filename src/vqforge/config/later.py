"""The user's later format (`model_type` + `model_args` with `data`, `train`, `wandb` sections) -> native.

This is the layout of the previous system's later versions (its `VQGAN/`, `RVQ-VQGAN/`, `RVQ-VQGAN-1/` and `PQ-GAN/`
folders, read by their `train/train.py`). Those versions train a taming VQGAN only: both optimizers learn at
`train.lr` with Adam betas (0.5, 0.9), the discriminator at `train.disc_lr` (default `lr`) every step, with no learning
rate decay; gradients are clipped to norm 1.0; `model_args.rvq_levels` > 1 (with variant EMAVQ) turns the quantizer
into a residual quantizer over one shared EMA codebook. Keys keep those meanings; the same rules as the seed format
apply (seed.py): inert keys are listed, ignored values named, unknown keys are errors.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .mapping import Mapped, NativeBuilder, check_keys, section
from .seed import (OTHER_MODEL_ARGS, VQFORGE_MODEL_ARGS, VQVAE2_MODEL_ARGS, ignored, inert, map_model_type,
                   map_taming_model)

TOP_KEYS = ("model_type", "model_args", "data", "train", "wandb")
SECTIONS = ("data", "train", "wandb")  # with model_type, these identify the format

LATER_MODEL_ARGS = ("model_variant", "n_embed", "embed_dim", "ddconfig", "lossconfig", "rvq_levels", "num_quantizers",
                    "use_residual_rq", "pq_num_subspaces", "pq_decay", "pq_eps")
DATA_KEYS = ("use_images", "train_dir", "val_dir", "batch_size", "num_workers", "sequence_length", "resolution", "seed")
TRAIN_KEYS = ("device", "num_steps", "lr", "disc_lr", "log_dir", "save_dir", "save_interval", "log_interval",
              "validation_interval", "best_max_images", "resume_ckpt", "grad_accum_steps")
WANDB_KEYS = ("enabled", "project", "name", "entity", "log_interval", "image_interval")

# the later train.py's values for absent keys, and its fixed behaviour
LATER_DEFAULTS: dict[str, Any] = {
    "loss.use_gan": True,  # it always builds and trains the discriminator
    "train.lr": 1.0e-4,
    "train.save_interval": 10000,
    "train.disc_update_every": 1,
    "train.lr_schedule": "constant",
    "train.grad_clip": 1.0,  # clip_grad_norm_(max_norm=1.0) before every optimizer step
    "log.every": 50,
    "data.random_crop": False,  # whole frames resized to resolution × resolution
}


def later_to_native(raw: dict) -> Mapped:
    """Map a later-format config (parsed JSON) to the native layout."""
    b = NativeBuilder("later")
    check_keys(raw, TOP_KEYS, "<root>")
    family = map_model_type(b, raw.get("model_type"))
    if family != "taming":
        raise ConfigError("model_type", f"{raw['model_type']!r}: the later format trains taming VQGANs only (its "
                          "train.py builds one whatever model_type says)",
                          'use "model_type": "TamingVQGAN", or write a seed-format file (model_args, train_args, '
                          "data_args) for VQ-VAE-2")
    args = section(raw, "model_args", "model_args")
    check_keys(args, tuple(dict.fromkeys(LATER_MODEL_ARGS + OTHER_MODEL_ARGS + VQVAE2_MODEL_ARGS
                                         + ("ckpt_path", "learning_rate", "lr") + VQFORGE_MODEL_ARGS)), "model_args")
    map_taming_model(b, args, "model_args", variant_from_type="EMAVQ" if raw["model_type"] in ("EMAVQ", "emavq")
                     else None)
    _map_rvq(b, args)
    _map_pq(b, args)
    for key in args:
        if key in ("ckpt_path", "learning_rate", "lr"):
            inert(b, f"model_args.{key}", "the later train.py builds the model from scratch and takes its learning "
                                          "rate from train.lr")
        elif key not in LATER_MODEL_ARGS and key not in VQFORGE_MODEL_ARGS:
            inert(b, f"model_args.{key}", "a taming model does not use it")
    data = section(raw, "data", "data")
    _map_data(b, data)
    _map_train(b, section(raw, "train", "train"), data)
    _map_wandb(b, section(raw, "wandb", "wandb"), section(raw, "train", "train"))
    for path, value in LATER_DEFAULTS.items():
        b.default(path, value)
    return b.result()


def _map_rvq(b: NativeBuilder, args: dict) -> None:
    """rvq_levels (or num_quantizers) -> a residual quantizer over one shared EMA codebook (variant EMAVQ only)."""
    key = "rvq_levels" if "rvq_levels" in args else ("num_quantizers" if "num_quantizers" in args else None)
    if key is None:
        if "use_residual_rq" in args:
            inert(b, "model_args.use_residual_rq", "it matters only with rvq_levels > 1")
        return
    if key == "rvq_levels" and "num_quantizers" in args:
        ignored(b, "model_args.num_quantizers", args["num_quantizers"], f"model_args.rvq_levels = "
                f"{args['rvq_levels']!r} wins", "only without rvq_levels")
    levels, src = args[key], f"model_args.{key}"
    variant = b.get("model.variant")
    if variant != "EMAVQ":
        inert(b, src, f"only the EMAVQ variant takes a residual depth (this model is {variant})")
        return
    use_rq = args.get("use_residual_rq", True)
    if not isinstance(use_rq, bool):
        raise ConfigError("model_args.use_residual_rq", f"expected true or false, got {use_rq!r}", "write true or false")
    if not use_rq:
        ignored(b, src, levels, "use_residual_rq is false, so the quantizer is a single EMA codebook",
                "with use_residual_rq true")
        return
    b.put("model.quantizer.rvq_levels", levels, src)
    if isinstance(levels, int) and not isinstance(levels, bool) and levels > 1:
        # the user's ResidualEMAVectorQuantizer: one shared EMA codebook for every depth, its prefix loss and its
        # key names (quantize.embedding.*)
        b.put("model.quantizer.shared_codebook", True, src)
        b.put("model.quantizer.rvq_loss", "prefix", src)


PQ_KEYS = {"pq_num_subspaces": "num_subspaces", "pq_decay": "decay", "pq_eps": "eps"}


def _map_pq(b: NativeBuilder, args: dict) -> None:
    """pq_num_subspaces / pq_decay / pq_eps: the product quantizer of variant PQEMAVQ."""
    variant = b.get("model.variant")
    for key, native in PQ_KEYS.items():
        if key not in args:
            continue
        if variant == "PQEMAVQ":
            b.put(f"model.quantizer.{native}", args[key], f"model_args.{key}")
        else:
            inert(b, f"model_args.{key}", f"model_variant is {variant}; product quantization applies to PQEMAVQ only")


def _map_data(b: NativeBuilder, data: dict) -> None:
    check_keys(data, DATA_KEYS, "data")
    for key, path in (("use_images", "data.use_images"), ("batch_size", "data.batch_size"),
                      ("num_workers", "data.num_workers"), ("sequence_length", "data.sequence_length"),
                      ("resolution", "data.resolution"), ("seed", "train.seed")):
        if key in data:
            b.put(path, data[key], f"data.{key}")
    b.default("data.num_workers", 4)
    b.default("train.seed", 2025)
    for key, path in (("train_dir", "data.train"), ("val_dir", "data.val")):
        folder = data.get(key)
        if folder is None or folder == "":
            continue
        if not isinstance(folder, str):
            raise ConfigError(f"data.{key}", f"expected a folder path, got {folder!r}", "put the path in quotes")
        b.put(path, [folder], f"data.{key}")


def _map_train(b: NativeBuilder, t: dict, data: dict) -> None:
    check_keys(t, TRAIN_KEYS, "train")
    for key, path in (("device", "train.device"), ("num_steps", "train.num_steps"), ("lr", "train.lr"),
                      ("disc_lr", "train.disc_lr"), ("save_interval", "train.save_interval"),
                      ("log_interval", "log.every"), ("grad_accum_steps", "train.grad_accum_steps")):
        if key in t:
            b.put(path, t[key], f"train.{key}")
    if t.get("save_dir") is not None:
        b.put("train.out_dir", t["save_dir"], "train.save_dir")
    if t.get("log_dir") is not None and t.get("log_dir") != t.get("save_dir"):
        b.note(f"train.log_dir = {t['log_dir']!r}: vqforge keeps the logs (train.log, metrics.jsonl, tensorboard/) in "
               "the run directory (train.save_dir, or --out) next to the checkpoints")
    if t.get("resume_ckpt") is not None:
        b.put("train.resume_from", t["resume_ckpt"], "train.resume_ckpt")
    interval = t.get("validation_interval", 0)
    if isinstance(interval, int) and not isinstance(interval, bool) and interval <= 0:
        # the previous system validated only with a positive interval
        if data.get("val_dir"):
            ignored(b, "data.val_dir", data["val_dir"], "train.validation_interval is 0 (or absent), so there is no "
                    "validation", "with a positive train.validation_interval")
        b.native.setdefault("data", {})["val"] = []
        b.sources["data.val"] = "train.validation_interval"
    elif "validation_interval" in t:
        b.put("train.validation_interval", interval, "train.validation_interval")
    if "best_max_images" in t:
        # validation stops after this many images = clips × sequence_length
        n, seq = t["best_max_images"], data.get("sequence_length", 1)
        if isinstance(n, int) and not isinstance(n, bool) and isinstance(seq, int) and seq >= 1 and n >= 1:
            b.put("data.max_val_samples", math.ceil(n / seq), "train.best_max_images")
        else:
            b.put("data.max_val_samples", n, "train.best_max_images")


def _map_wandb(b: NativeBuilder, w: dict, t: dict) -> None:
    check_keys(w, WANDB_KEYS, "wandb")
    if "enabled" in w:
        b.put("log.wandb", w["enabled"], "wandb.enabled")
    if "project" in w:
        b.put("log.project", w["project"], "wandb.project")
    else:
        b.default("log.project", "vqgan")
    if w.get("name") is not None:
        b.note(f"wandb.name = {w['name']!r}: vqforge names the wandb run after the run directory")
    if w.get("entity") is not None:
        b.note(f"wandb.entity = {w['entity']!r}: vqforge uses the entity of the wandb login (or WANDB_ENTITY)")
    if "log_interval" in w:
        if "log_interval" in t:
            if w["log_interval"] != t["log_interval"]:
                b.note(f"wandb.log_interval = {w['log_interval']!r}: vqforge logs scalars to every sink each "
                       f"train.log_interval ({t['log_interval']!r}) steps")
        else:
            b.put("log.every", w["log_interval"], "wandb.log_interval")
    if "image_interval" in w:
        b.put("log.image_every", w["image_interval"], "wandb.image_interval")


__all__ = ["later_to_native", "TOP_KEYS", "SECTIONS", "LATER_DEFAULTS"]
