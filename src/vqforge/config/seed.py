"""The user's seed format (`model_type`, `model_args`, `train_args`, `data_args`, `data_process`, ...) -> native.

Every key the user's previous system read keeps the meaning it had there (`../shared/seed/config-contract.md` maps
them, with the places in that code): `data_process.train` / `.vaild` (the user's spelling) are data directories that
replace `data_args.training_data_files` / `validation_data_files`; `train_args.checkpoint_path` is a checkpoint to
resume from; `folder_name` + "_" + the config file's stem is the run directory; taming models take their learning
rate from `model_args.learning_rate` (both optimizers, Adam betas (0.5, 0.9)) and their GAN settings from
`lossconfig`, while other models use `train_args.lr` (Adam betas (0.9, 0.999)), `disc_*`, `pixel_loss_factor` and
`perceptual_loss_factor`. Absent keys take that system's defaults (`SEED_DEFAULTS` and the family rules below).

Keys that system carried but never used (`time`, `default_gpu`, the preprocessor's folders, model keys a family does
not use, ...) load and are listed in the no-effect warning. Values it silently ignored (for taming models
`train_args.lr`, `disc_*`, ...) are ignored here too, each named in the warning with what applies instead. A key it
never read is a ConfigError with the closest valid key. A few vqforge settings that the format never had are
accepted under `train_args` / `data_args` as well (`VQFORGE_TRAIN_ARGS`, `VQFORGE_DATA_ARGS`); crop and flip settings
are reached with `--set data.random_crop=true` etc.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .mapping import Mapped, NativeBuilder, check_keys, reachable_attention, section
from .parse import closest
from .schema import FAMILY_ALIASES, PENDING_FAMILY_ALIASES, VARIANTS_BY_FAMILY
from .taming import map_lossconfig
from .user_models import apply_user_model_args, map_user_model_args

PREVIOUS = "the previous system ignored it too"

TOP_KEYS = ("model_type", "model_args", "train_args", "data_args", "use_images", "data_process", "use_wandb",
            "project_name", "scaling_rates", "time")
INERT_TOP = {"time": "a label the previous system put into run names only"}

TAMING_VARIANTS = VARIANTS_BY_FAMILY["taming"]
# variants of the user's later versions whose vqforge support is not there (none left)
PENDING_VARIANTS: dict[str, str] = {}
FAMILY_NAMES = {"vqvae2": "VQ-VAE-2", "vqvae2_optvq": "VQ-VAE-2 OptVQ", "dalle_vqvae": "VqVae"}

# VQ-VAE-2 parameters (vvvm23/vqvae-2 names) and the user's older names for them
VQVAE2_PARAMS = ("in_channels", "hidden_channels", "res_channels", "nb_res_layers", "nb_levels", "embed_dim",
                 "nb_entries", "scaling_rates")
VQVAE2_OLD_NAMES = {"input_channels": "in_channels", "vocab_size": "nb_entries", "n_init": "embed_dim",
                    "n_hid": "hidden_channels"}
# model_args keys each family of the previous system read (taming: TamingVQGANAdapter; vqvae2: VQVAEAdapter)
TAMING_MODEL_ARGS = ("model_variant", "n_embed", "embed_dim", "ddconfig", "lossconfig", "ckpt_path", "learning_rate",
                     "lr", "vocab_size", "n_init", "input_channels")
VQVAE2_MODEL_ARGS = VQVAE2_PARAMS + tuple(VQVAE2_OLD_NAMES)
# keys some family of the previous system read (or the launcher filled in): on a family that does not read them they
# load and are listed as having no effect
OTHER_MODEL_ARGS = ("group_count", "n_blk_per_group", "output_channels", "commitment_cost", "decay", "beta", "eps",
                    "sequence_length", "epsilon", "n_iters", "normalize_mode", "use_prob", "loss_q_type", "use_norm",
                    "use_proj", "rvq_levels", "num_quantizers", "use_residual_rq", "pq_num_subspaces", "pq_decay",
                    "pq_eps", "optvq_beta", "optvq_use_proj", "optvq_use_sinkhorn", "optvq_num_head", "use_optvq")
VQFORGE_MODEL_ARGS = ("quantizer",)  # vqforge's quantizer section (k-means init, restarts, ...), any family
MODEL_ARGS = tuple(dict.fromkeys(TAMING_MODEL_ARGS + VQVAE2_MODEL_ARGS + OTHER_MODEL_ARGS + VQFORGE_MODEL_ARGS))

# train_args keys the previous system read (handled one by one below) and the ones it carried without using
USER_TRAIN_ARGS = ("num_steps", "lr", "lr_decay", "folder_name", "checkpoint_path", "save_interval",
                   "validation_interval", "use_gan", "disc_factor", "disc_start", "pixel_loss_factor",
                   "perceptual_loss_factor", "disc_lr", "disc_beta1", "disc_beta2", "use_taming_loss")
INERT_TRAIN_ARGS = {
    "default_gpu": "the previous system took the GPU from its command line (vqforge: --set train.device=cuda:N)",
    "device": "the previous system's --device option always replaced it (vqforge: --set train.device=...)",
    "gpu_index": "the previous system read it only in code that was switched off",
}
# vqforge settings accepted in train_args too (the previous system had no such keys)
VQFORGE_TRAIN_ARGS: dict[str, str] = {
    "lr_decay_every": "train.lr_decay_every",
    "lr_schedule": "train.lr_schedule",
    "warmup_steps": "train.warmup_steps",
    "min_lr": "train.min_lr",
    "optimizer": "train.optimizer",
    "weight_decay": "train.weight_decay",
    "disc_weight": "loss.disc_weight",
    "disc_update_every": "train.disc_update_every",
    "disc_warmup_steps": "train.disc_warmup_steps",
    "grad_accum_steps": "train.grad_accum_steps",
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
_BETAS = {"beta1": 0, "beta2": 1}  # vqforge: the main optimizer's Adam betas

USER_DATA_ARGS = {
    "batch_size": "data.batch_size",
    "num_threads": "data.num_workers",
    "sequence_length": "data.sequence_length",
    "seed": "train.seed",
    "shard_id": "data.shard_id",
    "num_shards": "data.num_shards",
    "training_data_files": "data.train",
    "validation_data_files": "data.val",
}
INERT_DATA_ARGS = {
    "device_id": "the previous system passed it to its loader, which did not use it",
    "initial_prefetch_size": "the previous system's loader did not use it",
    "validation_ratio": "the previous system did not read it (its validation files are listed or found in "
                        "data_process.vaild)",
    "normalize_compute_args": "the previous system's statistics pass that read it was switched off (frames are "
                              "scaled to [-1, 1])",
}
VQFORGE_DATA_ARGS = {
    "num_workers": "data.num_workers",
    "frame_stride": "data.frame_stride",
    "use_images": "data.use_images",
    "val_batch_size": "data.val_batch_size",
    "shuffle": "data.shuffle",
    "max_val_samples": "data.max_val_samples",
    "source": "data.source",
}
DATA_PROCESS_KEYS = ("train", "vaild")
INERT_DATA_PROCESS = {k: "a setting of the previous system's clip/split preprocessor, not read by training"
                      for k in ("raw_video_dir", "processed_dir", "clipdata_dir", "val_ratio")}

SEED_DISC_UPDATE_EVERY = 3  # the user's previous system stepped the discriminator every 3rd step
# the first version's values for absent keys (trainVqVae.py, lossconfig.py, model_adapter.py)
SEED_DEFAULTS: dict[str, Any] = {
    "loss.use_gan": True,
    "train.num_steps": 100000,
    "train.save_interval": 10000,
    "train.validation_interval": 10000,
    "train.lr_schedule": "exponential",  # ExponentialLR(lr_decay) stepped every 1000 steps
    "train.lr_decay": 0.99,
    "train.lr_decay_every": 1000,
    "train.disc_lr_schedule": "constant",  # the scheduler was attached to the main optimizer only
    "train.disc_update_every": SEED_DISC_UPDATE_EVERY,
    "data.random_crop": False,  # whole frames, resized (no random crop)
    "log.project": "dalle_train_vae",  # its wandb project when project_name is absent
}
TAMING_LR_DEFAULT = 1.0e-4  # model_adapter.py: learning_rate, else model_args.lr, else 1e-4
TAMING_DEFAULT_LOSS = {"loss.disc_start": 10000, "loss.disc_weight": 0.8, "loss.codebook_weight": 1.0}
OTHER_LR_DEFAULT = 1.0e-3
OTHER_BETAS = [0.9, 0.999]  # torch Adam's defaults, used by the previous system for non-taming models
OTHER_DISC_START = 20000
OTHER_DISC_WEIGHT = 0.8  # its adaptive GAN weight was 0.8 × ‖∇rec‖/(‖∇g‖ + 1e-4)
VQVAE2_RES_CHANNELS = 64  # the previous system's VQ-VAE-2 default (vvvm23's is 32)
VQVAE2_BETA = 1.0  # its VQ-VAE-2 added the codebook MSE unweighted


# ------------------------------------------------------------------------------------------------- shared helpers

def inert(b: NativeBuilder, key: str, why: str) -> None:
    """A key the previous system carried without using: listed in the no-effect warning."""
    b.note(f"{key}: has no effect: {why}; {PREVIOUS}")


def ignored(b: NativeBuilder, key: str, value: Any, instead: str, would: str) -> None:
    """A value the previous system silently ignored: vqforge ignores it too and says what applies instead."""
    shown = f"[{value[0]!r}, ... {len(value)} entries]" if isinstance(value, list) and len(value) > 3 else repr(value)
    b.note(f"{key} = {shown}: ignored, as the previous system ignored it: {instead}; it takes effect {would}")


def map_model_type(b: NativeBuilder, mt: Any, where: str = "model_type") -> str:
    """model_type alias -> native family; names whose family vqforge lacks yet are a plain ConfigError."""
    known = list(FAMILY_ALIASES) + list(PENDING_FAMILY_ALIASES)
    if mt is None:
        raise ConfigError(where, "is missing",
                          'add "model_type": "TamingVQGAN" (taming VQGAN / EMAVQ) or "vqvae2" (VQ-VAE-2)')
    if isinstance(mt, str) and mt in PENDING_FAMILY_ALIASES:
        family, what = PENDING_FAMILY_ALIASES[mt]
        raise ConfigError(where, f"{mt!r} names the model family {family!r} ({what}), which is not available in "
                                 "vqforge yet", "train it with the previous system for now, or pick an available "
                                 f"family: {', '.join(FAMILY_ALIASES)}")
    if not isinstance(mt, str) or mt not in FAMILY_ALIASES:
        near = closest(str(mt), known)
        fix = f"did you mean {near!r}?" if near else f"use one of {', '.join(known)}"
        raise ConfigError(where, f"unknown model type {mt!r} (known: {', '.join(known)})", fix)
    family = FAMILY_ALIASES[mt]
    b.put("model.family", family, where)
    if mt == "vqvaeoptvq":  # the previous registry: the VqVae network with the OptVQ (Sinkhorn) quantizer
        b.put("model.dalle_vqvae.quantizer", "optvq", where)
    return family


def check_variant(mv: Any, src: str) -> None:
    if isinstance(mv, str) and mv in PENDING_VARIANTS:
        raise ConfigError(src, f"{mv!r} is {PENDING_VARIANTS[mv]}, which is not available in vqforge yet",
                          f"use one of {', '.join(TAMING_VARIANTS)}, or train it with the previous system for now")
    if not isinstance(mv, str) or mv not in TAMING_VARIANTS:
        near = closest(str(mv), TAMING_VARIANTS)
        fix = f"did you mean {near!r}?" if near else f"use one of {', '.join(TAMING_VARIANTS)}"
        raise ConfigError(src, f"{mv!r} is not a taming variant (taming variants: {', '.join(TAMING_VARIANTS)})", fix)


def map_taming_model(b: NativeBuilder, args: dict, where: str, *, variant_from_type: str | None) -> None:
    """n_embed, embed_dim, ddconfig, lossconfig and variant of a taming model (both user formats)."""
    mv = args.get("model_variant")
    src = f"{where}.model_variant"
    if variant_from_type is not None:
        b.put("model.variant", variant_from_type, "model_type")
    if mv is None:
        b.default("model.variant", "VQModel")
    else:
        check_variant(mv, src)
        b.put("model.variant", mv, src, why="model_type EMAVQ implies variant EMAVQ",
              fix='use "model_type": "TamingVQGAN" with "model_variant": "' + str(mv) + '", or drop model_variant')
    for key, alt, path, default in (("n_embed", "vocab_size", "model.n_embed", 1024),
                                    ("embed_dim", "n_init", "model.embed_dim", 256)):
        if key in args:
            b.put(path, args[key], f"{where}.{key}")
            if alt in args:
                ignored(b, f"{where}.{alt}", args[alt], f"{where}.{key} = {args[key]!r} wins",
                        f"only without {where}.{key}")
        elif alt in args:
            b.put(path, args[alt], f"{where}.{alt}")
        else:
            b.default(path, default)
    if "ddconfig" in args:
        b.put_tree("model.ddconfig", args["ddconfig"], f"{where}.ddconfig")
        if "input_channels" in args:
            ignored(b, f"{where}.input_channels", args["input_channels"], "ddconfig.in_channels decides",
                    "only when ddconfig is absent")
    elif "input_channels" in args:
        b.put("model.ddconfig.in_channels", args["input_channels"], f"{where}.input_channels")
    if isinstance(args.get("ddconfig"), dict) and isinstance(args["ddconfig"].get("resolution"), int) \
            and not isinstance(args["ddconfig"].get("resolution"), bool):
        b.default("data.resolution", args["ddconfig"]["resolution"])
    if args.get("lossconfig") is not None:
        map_lossconfig(b, args["lossconfig"], f"{where}.lossconfig")
        params = args["lossconfig"].get("params") or {}
        if isinstance(params, dict) and "disc_start" not in params:
            raise ConfigError(f"{where}.lossconfig.params.disc_start", "is missing: taming's "
                              "VQLPIPSWithDiscriminator requires it (the previous system could not build this loss)",
                              'add "disc_start": <the step from which the GAN term counts>, e.g. 10000')
    else:
        for path, value in TAMING_DEFAULT_LOSS.items():  # the loss the previous system built without a lossconfig
            b.default(path, value)
    if "quantizer" in args:
        b.put_tree("model.quantizer", args["quantizer"], f"{where}.quantizer")
    reachable_attention(b, args, where)


_FIXED_THERE = {"decay": "its codebooks always used EMA decay 0.99", "eps": "its codebooks always used eps 1e-5",
                "beta": "its commitment weight was fixed", "commitment_cost": "its commitment weight was fixed"}


def inert_model_args(b: NativeBuilder, args: dict, used: tuple[str, ...], family_text: str, where: str) -> None:
    for key in args:
        if key not in used and key not in VQFORGE_MODEL_ARGS:
            why = f"{family_text} does not use it" + (f" ({_FIXED_THERE[key]})" if key in _FIXED_THERE else "")
            inert(b, f"{where}.{key}", why + "; vqforge's own setting is model.quantizer.*"
                  if key in _FIXED_THERE else why)


# ---------------------------------------------------------------------------------------------------------- reader

def seed_to_native(raw: dict, config_stem: str | None = None) -> Mapped:
    """Map a seed-format config (parsed JSON) to the native layout; `config_stem` names the run directory."""
    b = NativeBuilder("seed")
    check_keys(raw, TOP_KEYS, "<root>")
    for key, why in INERT_TOP.items():
        if key in raw:
            inert(b, key, why)
    family = map_model_type(b, raw.get("model_type"))
    model_args = section(raw, "model_args", "model_args")
    check_keys(model_args, MODEL_ARGS, "model_args")
    MODEL_ARGS_MAPPERS[family](b, raw, model_args)

    train_args = section(raw, "train_args", "train_args")
    check_keys(train_args, USER_TRAIN_ARGS + tuple(INERT_TRAIN_ARGS) + tuple(VQFORGE_TRAIN_ARGS) + tuple(_BETAS),
               "train_args")
    _map_train_args(b, train_args, model_args, family, config_stem)
    _map_data(b, raw, section(raw, "data_args", "data_args"), section(raw, "data_process", "data_process"))
    if "use_images" in raw:
        b.put("data.use_images", raw["use_images"], "use_images")
    if "use_wandb" in raw:
        b.put("log.wandb", raw["use_wandb"], "use_wandb")
    if "project_name" in raw:
        b.put("log.project", raw["project_name"], "project_name")
    for path, value in SEED_DEFAULTS.items():
        b.default(path, value)
    return b.result()


def _map_taming_args(b: NativeBuilder, raw: dict, args: dict) -> None:
    mt = raw["model_type"]
    map_taming_model(b, args, "model_args", variant_from_type="EMAVQ" if mt in ("EMAVQ", "emavq") else None)
    if args.get("ckpt_path") is not None:
        b.put("model.init_from", args["ckpt_path"], "model_args.ckpt_path")
    # learning rate: model_args.learning_rate, else model_args.lr, else 1e-4, for both optimizers (betas 0.5, 0.9)
    if "learning_rate" in args:
        b.put("train.lr", args["learning_rate"], "model_args.learning_rate")
        if "lr" in args:
            ignored(b, "model_args.lr", args["lr"], f"model_args.learning_rate = {args['learning_rate']!r} is the "
                    "learning rate", "only without model_args.learning_rate")
    elif "lr" in args:
        b.put("train.lr", args["lr"], "model_args.lr")
    else:
        b.default("train.lr", TAMING_LR_DEFAULT)
    inert_model_args(b, args, TAMING_MODEL_ARGS, "a taming model", "model_args")
    if "scaling_rates" in raw:
        inert(b, "scaling_rates", "taming models take their downsampling from ddconfig.ch_mult")


def _map_vqvae2_args(b: NativeBuilder, raw: dict, args: dict) -> None:
    mt, mv = raw["model_type"], args.get("model_variant")
    if mv is not None:
        if mv in TAMING_VARIANTS:
            raise ConfigError(
                "model_args.model_variant",
                f"{mv!r} is a taming variant (taming variants: {', '.join(TAMING_VARIANTS)}), but model_type "
                f"{mt!r} selects the VQ-VAE-2 family, which has no variants",
                f'set "model_type": "TamingVQGAN" to train a taming {mv} model (its lossconfig then applies '
                "as written), or remove model_variant to train VQ-VAE-2",
            )
        raise ConfigError("model_args.model_variant", f"{mv!r}: model_type {mt!r} (VQ-VAE-2) has no variants",
                          "remove model_variant")
    b.default("model.variant", None)
    for key in VQVAE2_PARAMS:
        if key in args:
            b.put(f"model.vqvae2.{key}", args[key], f"model_args.{key}")
    # an older name counts only when its new name is absent (the previous system let the new name win)
    for old, new in VQVAE2_OLD_NAMES.items():
        if old not in args:
            continue
        if new in args:
            ignored(b, f"model_args.{old}", args[old], f"model_args.{new} = {args[new]!r} wins",
                    f"only without model_args.{new}")
        else:
            b.put(f"model.vqvae2.{new}", args[old], f"model_args.{old}")
    if "scaling_rates" in raw:
        if "scaling_rates" in args:
            ignored(b, "scaling_rates", raw["scaling_rates"], f"model_args.scaling_rates = {args['scaling_rates']!r} "
                    "wins", "only without model_args.scaling_rates")
        else:
            b.put("model.vqvae2.scaling_rates", raw["scaling_rates"], "scaling_rates")
    rates = b.get("model.vqvae2.scaling_rates")
    if isinstance(rates, list):
        b.default("model.vqvae2.nb_levels", len(rates))  # one level per rate
    b.default("model.vqvae2.res_channels", VQVAE2_RES_CHANNELS)
    b.default("model.quantizer.beta", VQVAE2_BETA)
    if "quantizer" in args:
        b.put_tree("model.quantizer", args["quantizer"], "model_args.quantizer")
    inert_model_args(b, args, VQVAE2_MODEL_ARGS, "the VQ-VAE-2 family (model_type vqvae2)", "model_args")


def _map_user_family_args(b: NativeBuilder, raw: dict, args: dict) -> None:
    """The OptVQ VQ-VAE-2 and the VqVae: their model_args are mapped by user_models.py."""
    family = b.get("model.family")
    mt, mv = raw["model_type"], args.get("model_variant")
    if mv is not None:
        raise ConfigError("model_args.model_variant", f"{mv!r}: model_type {mt!r} ({FAMILY_NAMES[family]}) has no "
                          "variants", 'remove model_variant, or set "model_type": "TamingVQGAN" for a taming variant')
    b.default("model.variant", None)
    apply_user_model_args(b, map_user_model_args(family, args, "model_args",
                                                  variant="optvq" if mt == "vqvaeoptvq" else None))
    if "scaling_rates" in raw:
        if family == "dalle_vqvae":
            inert(b, "scaling_rates", "the VqVae model has one level and takes no scaling rates")
        elif "scaling_rates" in args:
            ignored(b, "scaling_rates", raw["scaling_rates"], f"model_args.scaling_rates = {args['scaling_rates']!r} "
                    "wins", "only without model_args.scaling_rates")
        else:
            b.put("model.vqvae2_optvq.scaling_rates", raw["scaling_rates"], "scaling_rates")


# family -> the mapping of its model_args (a family added to FAMILY_ALIASES adds its mapper here; every family but
# taming takes train_args.lr / disc_* / pixel_loss_factor / perceptual_loss_factor, see _map_train_args)
MODEL_ARGS_MAPPERS = {"taming": _map_taming_args, "vqvae2": _map_vqvae2_args, "vqvae2_optvq": _map_user_family_args,
                      "dalle_vqvae": _map_user_family_args}


def _map_train_args(b: NativeBuilder, args: dict, model_args: dict, family: str, stem: str | None) -> None:
    for key, why in INERT_TRAIN_ARGS.items():
        if key in args:
            inert(b, f"train_args.{key}", why)
    for key in ("num_steps", "lr_decay", "save_interval", "validation_interval"):
        if key in args:
            b.put(f"train.{key}", args[key], f"train_args.{key}")
    use_gan = args.get("use_gan", True)
    if not isinstance(use_gan, bool):
        raise ConfigError("train_args.use_gan", f"expected true or false, got {use_gan!r}", "write true or false")
    if "use_gan" in args:
        b.put("loss.use_gan", use_gan, "train_args.use_gan")
    if args.get("use_taming_loss") is False:
        raise ConfigError("train_args.use_taming_loss", "false (train a taming model with the non-taming loss) is "
                          "not supported by vqforge", "remove use_taming_loss (true or absent: taming models use "
                          "their lossconfig)")
    if "use_taming_loss" in args:
        inert(b, "train_args.use_taming_loss", "taming models always use their lossconfig"
              if family == "taming" else "it concerns taming models only")
    if args.get("folder_name") is not None:
        folder = args["folder_name"]
        if not isinstance(folder, str):
            raise ConfigError("train_args.folder_name", f"expected a folder path string, got {folder!r}",
                              "put the path in quotes")
        b.put("train.out_dir", f"{folder}_{stem}" if stem else folder, "train_args.folder_name")
    if args.get("checkpoint_path") is not None:
        b.put("train.resume_from", args["checkpoint_path"], "train_args.checkpoint_path")
    for key, path in VQFORGE_TRAIN_ARGS.items():
        if key in args:
            b.put(path, args[key], f"train_args.{key}")
    if family == "taming":
        _taming_ignores(b, args, model_args)
    else:
        _other_gan_args(b, args, use_gan)
    given = {i: args[k] for k, i in _BETAS.items() if k in args}
    if given:
        default = [0.5, 0.9] if family == "taming" else OTHER_BETAS
        b.put("train.betas", [given.get(i, default[i]) for i in (0, 1)],
              ", ".join(f"train_args.{k}" for k in _BETAS if k in args))
    elif family != "taming":
        b.default("train.betas", list(OTHER_BETAS))


def _taming_ignores(b: NativeBuilder, args: dict, model_args: dict) -> None:
    """train_args values the previous system ignored for taming models: named once, with what applies instead."""
    would = "for non-taming models (model_type vqvae2)"
    lr_src = next((f"model_args.{k}" for k in ("learning_rate", "lr") if k in model_args), None)
    lr_text = f"{lr_src} ({model_args[lr_src.split('.')[1]]!r})" if lr_src else f"the default {TAMING_LR_DEFAULT:g}"
    lp = section(model_args.get("lossconfig") or {}, "params", "model_args.lossconfig.params") \
        if isinstance(model_args.get("lossconfig"), dict) else {}
    if "lr" in args:
        ignored(b, "train_args.lr", args["lr"], f"taming models learn at {lr_text}", would)
    if "disc_lr" in args:
        ignored(b, "train_args.disc_lr", args["disc_lr"], f"the taming discriminator also learns at {lr_text}", would)
    for k in ("disc_beta1", "disc_beta2"):
        if k in args:
            ignored(b, f"train_args.{k}", args[k], "taming's discriminator optimizer uses Adam betas (0.5, 0.9)",
                    would)
    for k, default in (("disc_factor", 1.0), ("disc_start", None)):
        if k in args:
            if k in lp:
                instead = f"model_args.lossconfig.params.{k} = {lp[k]!r} applies"
            elif default is not None:
                instead = f"taming's default {k} {default} applies (model_args.lossconfig.params.{k} is not given)"
            else:
                instead = "the lossconfig's disc_start applies"
            ignored(b, f"train_args.{k}", args[k], instead, would)
    for k, native in (("pixel_loss_factor", "pixelloss_weight"), ("perceptual_loss_factor", "perceptual_weight")):
        if k in args:
            ignored(b, f"train_args.{k}", args[k], f"model_args.lossconfig.params.{native} weights that term", would)


def _other_gan_args(b: NativeBuilder, args: dict, use_gan: bool) -> None:
    """Learning rate and GAN objective of non-taming models (lossconfig.py's LossCalculator)."""
    if "lr" in args:
        b.put("train.lr", args["lr"], "train_args.lr")
    else:
        b.default("train.lr", OTHER_LR_DEFAULT)
    if "disc_lr" in args:
        b.put("train.disc_lr", args["disc_lr"], "train_args.disc_lr")
    if "disc_beta1" in args or "disc_beta2" in args:
        b.put("train.disc_betas", [args.get("disc_beta1", 0.5), args.get("disc_beta2", 0.9)],
              ", ".join(f"train_args.{k}" for k in ("disc_beta1", "disc_beta2") if k in args))
    for key, default in (("disc_factor", 1.0), ("disc_start", OTHER_DISC_START)):
        if key in args:
            b.put(f"loss.{key}", args[key], f"train_args.{key}")
        else:
            b.default(f"loss.{key}", default)
    b.default("loss.disc_weight", OTHER_DISC_WEIGHT)
    if use_gan:
        # perceptual_loss_factor·LPIPS + pixel_loss_factor·L1 + VQ loss + adaptive-weighted GAN term
        b.default("loss.pixel_loss", "l1")
        for key, native in (("pixel_loss_factor", "pixelloss_weight"), ("perceptual_loss_factor", "perceptual_weight")):
            if key in args:
                b.put(f"loss.{native}", args[key], f"train_args.{key}")
    else:
        # MSE + VQ loss, no LPIPS
        b.default("loss.pixel_loss", "l2")
        b.default("loss.perceptual_weight", 0.0)
        for key in ("pixel_loss_factor", "perceptual_loss_factor"):
            if key in args:
                inert(b, f"train_args.{key}", "with use_gan false the loss is MSE + VQ loss")


def _map_data(b: NativeBuilder, raw: dict, args: dict, dp: dict) -> None:
    check_keys(args, tuple(USER_DATA_ARGS) + tuple(INERT_DATA_ARGS) + tuple(VQFORGE_DATA_ARGS), "data_args")
    check_keys(dp, DATA_PROCESS_KEYS + tuple(INERT_DATA_PROCESS), "data_process")
    for key, why in INERT_DATA_ARGS.items():
        if key in args:
            inert(b, f"data_args.{key}", why)
    for key, why in INERT_DATA_PROCESS.items():
        if key in dp:
            inert(b, f"data_process.{key}", why)
    # data_process.train / .vaild are folders whose files replace the data_args lists
    dirs = {"training_data_files": "train", "validation_data_files": "vaild"}
    for lst, split in dirs.items():
        folder = dp.get(split)
        if folder is None:
            continue
        src = f"data_process.{split}"
        if not isinstance(folder, str):
            raise ConfigError(src, f"expected a data folder path, got {folder!r}",
                              "give the folder whose files are used (crop and flip settings are vqforge keys: "
                              "--set data.resolution=256 --set data.random_crop=true --set data.hflip=true)")
        b.put("data.train" if split == "train" else "data.val", [folder], src)
        if lst in args:
            ignored(b, f"data_args.{lst}", args[lst], f"{src} ({folder!r}) replaces it",
                    f"only without {src}")
    for key, path in {**USER_DATA_ARGS, **VQFORGE_DATA_ARGS}.items():
        if key not in args or (key in dirs and dp.get(dirs[key]) is not None):
            continue
        value = args[key]
        if key in dirs and isinstance(value, str):
            value = [value]
        b.put(path, value, f"data_args.{key}")


__all__ = ["seed_to_native", "TOP_KEYS", "MODEL_ARGS", "USER_TRAIN_ARGS", "USER_DATA_ARGS", "SEED_DEFAULTS",
           "map_model_type", "map_taming_model", "inert", "ignored", "reachable_attention"]
