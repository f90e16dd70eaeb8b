"""The user's seed format (`model_type`, `model_args`, `train_args`, `data_args`, ...) -> native.

Key names are the user's; each maps to exactly one native path (tables below). Differences from the native
defaults that the user's previous system had: the discriminator is stepped every 3rd generator step
(`train.disc_update_every: 3`), and with a VQLPIPSWithDiscriminator `lossconfig` the GAN is on unless
`train_args.use_gan` is false. `data_process.train` / `.vaild` (the user's spelling) or `.valid` hold the crop
settings:

    "data_process": {"train": {"resolution": 256, "resize": 288, "random_crop": true, "hflip": true},
                     "vaild": {"resolution": 256}}

(`size` = `resolution`; `crop: "random" | "center"` = `random_crop`; `random_flip` = `hflip`). Validation always
center-crops without flipping, so only its resolution/resize are read, and they must agree with training.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .mapping import Mapped, NativeBuilder, check_keys, section
from .parse import closest
from .schema import FAMILY_ALIASES, VARIANTS_BY_FAMILY
from .taming import map_lossconfig
from .user_models import TAMING_EXTRA, apply_user_model_args, map_user_model_args

USER_FAMILIES = ("vqvae2_optvq", "dalle_vqvae")  # model_args mapped entirely by user_models.py
FAMILY_NAMES = {"vqvae2": "VQ-VAE-2", "vqvae2_optvq": "VQ-VAE-2 OptVQ", "dalle_vqvae": "VqVae"}

TOP_KEYS = ("model_type", "model_args", "train_args", "data_args", "use_images", "data_process", "use_wandb",
            "project_name", "scaling_rates")

TAMING_VARIANTS = VARIANTS_BY_FAMILY["taming"]

# VQ-VAE-2 parameters (vvvm23/vqvae-2 names) and the user's older names for them
VQVAE2_PARAMS = ("in_channels", "hidden_channels", "res_channels", "nb_res_layers", "nb_levels", "embed_dim",
                 "nb_entries", "scaling_rates")
VQVAE2_OLD_NAMES = {"input_channels": "in_channels", "vocab_size": "nb_entries", "n_init": "embed_dim",
                    "n_hid": "hidden_channels"}

MODEL_ARGS = ("model_variant", "n_embed", "embed_dim", "ddconfig", "lossconfig", "ckpt_path", "quantizer", "beta",
              "decay", "eps") + VQVAE2_PARAMS + tuple(VQVAE2_OLD_NAMES)

TRAIN_ARGS: dict[str, str] = {
    "num_steps": "train.num_steps",
    "lr": "train.lr",
    "lr_decay": "train.lr_decay",
    "lr_decay_every": "train.lr_decay_every",  # steps between two lr × lr_decay (seed decay interval)
    "lr_schedule": "train.lr_schedule",
    "warmup_steps": "train.warmup_steps",
    "min_lr": "train.min_lr",
    "optimizer": "train.optimizer",
    "weight_decay": "train.weight_decay",
    "use_gan": "loss.use_gan",
    "disc_start": "loss.disc_start",
    "disc_factor": "loss.disc_factor",
    "disc_weight": "loss.disc_weight",
    "disc_lr": "train.disc_lr",
    "disc_update_every": "train.disc_update_every",
    "disc_warmup_steps": "train.disc_warmup_steps",
    "save_interval": "train.save_interval",
    "validation_interval": "train.validation_interval",
    "checkpoint_path": "train.out_dir",
    "grad_accum_steps": "train.grad_accum_steps",
    "device": "train.device",
    "grad_clip": "train.grad_clip",
    "precision": "train.precision",
    "ema_decay": "train.ema_decay",
    "keep_last": "train.keep_last",
    "max_bad_steps": "train.max_bad_steps",
    "val_max_batches": "train.val_max_batches",
    "best_metric": "train.best_metric",
    "seed": "train.seed",
    "log_interval": "log.every",
    "image_interval": "log.image_every",
}
_BETAS = {"beta1": ("train.betas", 0), "beta2": ("train.betas", 1),
          "disc_beta1": ("train.disc_betas", 0), "disc_beta2": ("train.disc_betas", 1)}
_DEFAULT_BETAS = (0.5, 0.9)

DATA_ARGS: dict[str, str] = {
    "batch_size": "data.batch_size",
    "num_threads": "data.num_workers",
    "num_workers": "data.num_workers",
    "sequence_length": "data.sequence_length",
    "frame_stride": "data.frame_stride",
    "seed": "train.seed",
    "training_data_files": "data.train",
    "validation_data_files": "data.val",
    "use_images": "data.use_images",
    "val_batch_size": "data.val_batch_size",
    "shuffle": "data.shuffle",
    "max_val_samples": "data.max_val_samples",
    "source": "data.source",
}

TRANSFORM_KEYS = ("resolution", "size", "resize", "random_crop", "crop", "hflip", "random_flip")
SEED_DISC_UPDATE_EVERY = 3  # the user's previous system stepped the discriminator every 3rd step


def seed_to_native(raw: dict) -> Mapped:
    """Map a seed-format config (already parsed JSON) to the native layout."""
    b = NativeBuilder("seed")
    check_keys(raw, TOP_KEYS, "<root>")
    family = _map_model_type(b, raw)
    model_args = section(raw, "model_args", "model_args")
    if family not in USER_FAMILIES:  # those check their own keys (user_models.py)
        check_keys(model_args, MODEL_ARGS + (TAMING_EXTRA if family == "taming" else ()), "model_args")
    _map_variant(b, raw, model_args, family)
    _map_model_args(b, model_args, family)
    if "scaling_rates" in raw:
        if family == "dalle_vqvae":
            b.note("scaling_rates: has no effect: the VqVae model has one level")
        else:
            arch = "vqvae2_optvq" if family == "vqvae2_optvq" else "vqvae2"
            b.put(f"model.{arch}.scaling_rates", raw["scaling_rates"], "scaling_rates")
    rates = b.get("model.vqvae2.scaling_rates")
    if isinstance(rates, list):
        b.default("model.vqvae2.nb_levels", len(rates))  # as vvvm23's VQ-VAE-2: one level per rate

    has_gan_loss = False
    if model_args.get("lossconfig") is not None:
        has_gan_loss = map_lossconfig(b, model_args["lossconfig"], "model_args.lossconfig") == "gan"

    _map_train_args(b, section(raw, "train_args", "train_args"))
    _map_data_args(b, section(raw, "data_args", "data_args"))
    if "use_images" in raw:
        b.put("data.use_images", raw["use_images"], "use_images")
    _map_data_process(b, section(raw, "data_process", "data_process"))
    if "use_wandb" in raw:
        b.put("log.wandb", raw["use_wandb"], "use_wandb")
    if "project_name" in raw:
        b.put("log.project", raw["project_name"], "project_name")

    # the seed format's own defaults
    b.default("train.disc_update_every", SEED_DISC_UPDATE_EVERY)
    if has_gan_loss and not b.is_set("loss.use_gan"):
        b.default("loss.use_gan", True)
        b.note("train_args.use_gan: not given; the GAN is on (loss.use_gan: true) because model_args.lossconfig "
               "names VQLPIPSWithDiscriminator. Set \"use_gan\": false to train without a discriminator")
    decay = b.get("train.lr_decay")
    if isinstance(decay, (int, float)) and not isinstance(decay, bool) and decay < 1:
        b.default("train.lr_schedule", "exponential")
        if not b.is_set("train.lr_decay_every"):
            b.note("train_args.lr_decay: the learning rate is multiplied by lr_decay every 1000 steps "
                   "(train.lr_decay_every); give train_args.lr_decay_every to change the interval")
    if family == "taming":
        ddc = model_args.get("ddconfig")
        if isinstance(ddc, dict) and isinstance(ddc.get("resolution"), int) and not isinstance(ddc.get("resolution"), bool):
            b.default("data.resolution", ddc["resolution"])
    return b.result()


def _map_model_type(b: NativeBuilder, raw: dict) -> str:
    mt = raw.get("model_type")
    known = list(FAMILY_ALIASES)
    if mt is None:
        raise ConfigError("model_type", "is missing",
                          'add "model_type": "TamingVQGAN" (taming VQGAN / EMAVQ / GumbelVQ) or "vqvae2" (VQ-VAE-2)')
    if not isinstance(mt, str) or mt not in FAMILY_ALIASES:
        near = closest(str(mt), known)
        fix = f"did you mean {near!r}?" if near else f"use one of {', '.join(known)}"
        raise ConfigError("model_type", f"unknown model type {mt!r} (known: {', '.join(known)})", fix)
    family = FAMILY_ALIASES[mt]
    b.put("model.family", family, "model_type")
    return family


def _map_variant(b: NativeBuilder, raw: dict, model_args: dict, family: str) -> None:
    mt = raw["model_type"]
    mv = model_args.get("model_variant")
    src = "model_args.model_variant"
    if family != "taming":
        if mv is not None:
            if mv in TAMING_VARIANTS:
                raise ConfigError(
                    src,
                    f"{mv!r} is a taming variant (taming variants: {', '.join(TAMING_VARIANTS)}), but model_type "
                    f"{mt!r} selects the {FAMILY_NAMES.get(family, family)} family, which has no variants",
                    f'set "model_type": "TamingVQGAN" to train a taming {mv} model (its lossconfig then applies '
                    "as written), or remove model_variant to train VQ-VAE-2",
                )
            raise ConfigError(src, f"{mv!r}: model_type {mt!r} ({FAMILY_NAMES.get(family, family)}) has no variants",
                              "remove model_variant")
        b.default("model.variant", None)
        return
    if mt in ("EMAVQ", "emavq"):
        b.put("model.variant", "EMAVQ", "model_type")
    if mv is None:
        b.default("model.variant", "VQModel")
        return
    if not isinstance(mv, str) or mv not in TAMING_VARIANTS:
        near = closest(str(mv), TAMING_VARIANTS)
        fix = f"did you mean {near!r}?" if near else f"use one of {', '.join(TAMING_VARIANTS)}"
        raise ConfigError(src, f"{mv!r} is not a taming variant (taming variants: {', '.join(TAMING_VARIANTS)})", fix)
    b.put("model.variant", mv, src, why=f"model_type {mt!r} implies variant EMAVQ",
          fix='use "model_type": "TamingVQGAN" with "model_variant": "' + mv + '", or drop model_variant')


def _map_model_args(b: NativeBuilder, args: dict, family: str) -> None:
    # the OptVQ VQ-VAE-2, the VqVae and the taming residual/product settings (user_models.py)
    user = map_user_model_args(family, args, "model_args", variant=b.get("model.variant"))
    apply_user_model_args(b, user)
    for key, value in args.items():
        src = f"model_args.{key}"
        if key in ("model_variant", "lossconfig") or key in user.handled:
            continue
        if key == "n_embed":
            b.put("model.n_embed", value, src)
        elif key == "embed_dim":
            b.put("model.embed_dim" if family == "taming" else "model.vqvae2.embed_dim", value, src)
        elif key == "ddconfig":
            b.put_tree("model.ddconfig", value, src)
        elif key == "ckpt_path":
            if value is not None:
                b.put("model.init_from", value, src)
        elif key == "quantizer":
            b.put_tree("model.quantizer", value, src)
        elif key in ("beta", "decay", "eps"):
            b.put(f"model.quantizer.{key}", value, src)
        elif key in VQVAE2_PARAMS:
            b.put(f"model.vqvae2.{key}", value, src)
    # older names after the new ones, so a clash names the older key as the one to remove
    for old, new in VQVAE2_OLD_NAMES.items():
        if old in args and old not in user.handled:
            b.put(f"model.vqvae2.{new}", args[old], f"model_args.{old}", why=f"{old} is the older name of {new}",
                  fix=f"remove model_args.{old} and keep model_args.{new}")


def _map_train_args(b: NativeBuilder, args: dict) -> None:
    check_keys(args, list(TRAIN_ARGS) + list(_BETAS), "train_args")
    for key, value in args.items():
        if key in TRAIN_ARGS:
            b.put(TRAIN_ARGS[key], value, f"train_args.{key}")
    for target in ("train.betas", "train.disc_betas"):
        given = {i: (k, args[k]) for k, (t, i) in _BETAS.items() if t == target and k in args}
        if not given:
            continue
        pair = [given[i][1] if i in given else _DEFAULT_BETAS[i] for i in (0, 1)]
        b.put(target, pair, ", ".join(f"train_args.{k}" for k, _ in given.values()))
        for i, (k, _) in given.items():
            b.sources[f"{target}[{i}]"] = f"train_args.{k}"


def _map_data_args(b: NativeBuilder, args: dict) -> None:
    check_keys(args, DATA_ARGS, "data_args")
    for key, value in args.items():
        if key in ("training_data_files", "validation_data_files") and isinstance(value, str):
            value = [value]
        b.put(DATA_ARGS[key], value, f"data_args.{key}")


def _map_data_process(b: NativeBuilder, dp: dict) -> None:
    if not dp:
        return
    check_keys(dp, ("train", "vaild", "valid"), "data_process")
    same_fix = ("give data_process.train and the validation block the same resolution and resize: vqforge trains "
                "and validates at one data.resolution")
    for split in ("train", "vaild", "valid"):
        block = section(dp, split, f"data_process.{split}")
        where = f"data_process.{split}"
        check_keys(block, TRANSFORM_KEYS, where)
        for key, value in block.items():
            src = f"{where}.{key}"
            if key in ("resolution", "size"):
                b.put("data.resolution", value, src, fix=same_fix)
            elif key == "resize":
                b.put("data.resize", value, src, fix=same_fix)
            else:
                random = _flag(key, value, src)
                if split == "train":
                    b.put("data.hflip" if key in ("hflip", "random_flip") else "data.random_crop", random, src)
                elif random:
                    b.note(f"{src}: no effect (validation always center-crops and never flips)")


def _flag(key: str, value: Any, src: str) -> bool:
    """random_crop/hflip/random_flip booleans, or crop: "random" | "center"."""
    if key == "crop":
        if value not in ("random", "center"):
            raise ConfigError(src, f"{value!r} is not 'random' or 'center'", 'write "random" or "center"')
        return value == "random"
    if not isinstance(value, bool):
        raise ConfigError(src, f"expected true or false, got {value!r}", "write true or false (without quotes)")
    return value


__all__ = ["seed_to_native", "TOP_KEYS", "MODEL_ARGS", "TRAIN_ARGS", "DATA_ARGS", "TRANSFORM_KEYS"]
