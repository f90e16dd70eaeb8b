"""taming-transformers YAML (`model.target: taming.models.vqgan.VQModel|EMAVQ|GumbelVQ` + `model.params`) -> native.

The `target` strings are read as names only: the class at the end of the dotted path picks a vqforge variant;
nothing is imported or instantiated. `lossconfig` (VQLPIPSWithDiscriminator) is shared with the seed format.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .mapping import Mapped, NativeBuilder, check_keys, class_name, reachable_attention, section

MODEL_TARGETS = ("VQModel", "EMAVQ", "GumbelVQ")

# VQLPIPSWithDiscriminator parameter -> native path (use_actnorm and disc_conditional are handled apart)
LOSS_PARAMS: dict[str, str] = {
    "disc_start": "loss.disc_start",
    "codebook_weight": "loss.codebook_weight",
    "pixelloss_weight": "loss.pixelloss_weight",
    "disc_num_layers": "loss.disc_num_layers",
    "disc_in_channels": "loss.disc_in_channels",
    "disc_factor": "loss.disc_factor",
    "disc_weight": "loss.disc_weight",
    "perceptual_weight": "loss.perceptual_weight",
    "disc_ndf": "loss.disc_ndf",
    "disc_loss": "loss.disc_loss",
}
_LOSS_SPECIAL = ("use_actnorm", "disc_conditional")

# constructor parameters of taming's model classes (same names so existing files load)
_COMMON_PARAMS = ("ddconfig", "lossconfig", "n_embed", "embed_dim", "ckpt_path", "ignore_keys", "image_key",
                  "colorize_nlabels", "monitor", "remap")
MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "VQModel": _COMMON_PARAMS + ("sane_index_shape",),
    "EMAVQ": _COMMON_PARAMS + ("sane_index_shape",),
    "GumbelVQ": _COMMON_PARAMS + ("temperature_scheduler_config", "kl_weight"),
}
# accepted for compatibility; they change nothing in vqforge (why, for the note)
_NO_EFFECT_PARAMS = {
    "image_key": "vqforge's data pipeline feeds images directly",
    "colorize_nlabels": "segmentation colouring is not supported",
    "monitor": "vqforge picks its best checkpoint by train.best_metric",
    "remap": "vqforge's indices always index the full codebook (no remapping)",
    "sane_index_shape": "vqforge's indices always have shape (B, H, W)",
}
_GUMBEL_KL_WEIGHT = 1.0e-8  # taming GumbelVQ's default kl_weight
_DATA_PARAMS = ("batch_size", "num_workers", "train", "validation", "test", "wrap")
_SCHEDULER_PARAMS = ("warm_up_steps", "lr_min", "lr_max", "lr_start", "max_decay_steps", "verbosity_interval")


def map_lossconfig(b: NativeBuilder, lossconfig: Any, where: str, allow_dummy: bool = False) -> str:
    """Map a `lossconfig: {target, params}` block onto loss.*. Returns "gan" or "dummy"."""
    if not isinstance(lossconfig, dict):
        raise ConfigError(where, f"expected a mapping with target and params, got {lossconfig!r}",
                          "write lossconfig: {target: ...VQLPIPSWithDiscriminator, params: {...}}")
    check_keys(lossconfig, ("target", "params"), where)
    if "target" not in lossconfig:
        raise ConfigError(f"{where}.target", "is missing",
                          "add target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator")
    name = class_name(lossconfig["target"], f"{where}.target")
    params = section(lossconfig, "params", f"{where}.params")
    if name == "DummyLoss" and allow_dummy:
        if params:
            raise ConfigError(f"{where}.params", "DummyLoss takes no parameters", "remove params")
        b.note(f"{where}.target: DummyLoss defines no training loss; vqforge's default loss settings (loss.*) "
               "apply if this config is trained")
        return "dummy"
    if name != "VQLPIPSWithDiscriminator":
        supported = "VQLPIPSWithDiscriminator" + (" (or DummyLoss)" if allow_dummy else "")
        raise ConfigError(f"{where}.target", f"{lossconfig['target']!r} is not a supported loss; supported: {supported}",
                          "use taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator (any module path ending in "
                          "VQLPIPSWithDiscriminator is accepted)")
    check_keys(params, list(LOSS_PARAMS) + list(_LOSS_SPECIAL), f"{where}.params")
    for key, value in params.items():
        src = f"{where}.params.{key}"
        if key in LOSS_PARAMS:
            b.put(LOSS_PARAMS[key], value, src)
        elif key == "use_actnorm":
            if not isinstance(value, bool):
                raise ConfigError(src, f"expected true or false, got {value!r}", "write true or false")
            b.put("loss.disc_norm", "act" if value else "batch", src)
        elif key == "disc_conditional":
            if not isinstance(value, bool):
                raise ConfigError(src, f"expected true or false, got {value!r}", "write true or false")
            if value:
                raise ConfigError(src, "a conditional discriminator is not supported by vqforge",
                                  "set disc_conditional: false (or remove it)")
    return "gan"


def _map_temperature(b: NativeBuilder, sched: Any, where: str) -> None:
    """taming's LambdaWarmUpCosineScheduler for the Gumbel temperature -> quantizer.temperature_* (cosine)."""
    if not isinstance(sched, dict):
        raise ConfigError(where, f"expected a mapping with target and params, got {sched!r}",
                          "write temperature_scheduler_config: {target: taming.lr_scheduler.LambdaWarmUpCosineScheduler, params: {...}}")
    check_keys(sched, ("target", "params"), where)
    name = class_name(sched.get("target"), f"{where}.target")
    if name != "LambdaWarmUpCosineScheduler":
        raise ConfigError(f"{where}.target", f"{sched.get('target')!r} is not supported; supported: LambdaWarmUpCosineScheduler",
                          "use taming.lr_scheduler.LambdaWarmUpCosineScheduler, or set model.quantizer.temperature_* natively")
    params = section(sched, "params", f"{where}.params")
    check_keys(params, _SCHEDULER_PARAMS, f"{where}.params")
    for req in ("lr_min", "lr_max", "max_decay_steps"):
        if req not in params:
            raise ConfigError(f"{where}.params.{req}", "is missing", f"give {req} (the scheduler needs it)")
    warm = params.get("warm_up_steps", 0)
    if warm is not None and not (isinstance(warm, (int, float)) and not isinstance(warm, bool) and warm == 0):
        raise ConfigError(f"{where}.params.warm_up_steps", f"a temperature warm-up ({warm!r} steps) is not supported",
                          "set warm_up_steps: 0 (the temperature then anneals from lr_max to lr_min by a cosine)")
    b.put("model.quantizer.temperature_start", params["lr_max"], f"{where}.params.lr_max")
    b.put("model.quantizer.temperature_end", params["lr_min"], f"{where}.params.lr_min")
    b.put("model.quantizer.temperature_anneal_steps", params["max_decay_steps"], f"{where}.params.max_decay_steps")
    b.put("model.quantizer.temperature_schedule", "cosine", f"{where}.target")


def _crop_size(block: Any, where: str) -> tuple[Any, str] | None:
    """The `size` of a taming dataset block (params.size or params.config.size), if any."""
    if not isinstance(block, dict):
        return None
    params = block.get("params")
    if not isinstance(params, dict):
        return None
    if "size" in params:
        return params["size"], f"{where}.params.size"
    cfg = params.get("config")
    if isinstance(cfg, dict) and "size" in cfg:
        return cfg["size"], f"{where}.params.config.size"
    return None


def taming_to_native(raw: dict) -> Mapped:
    """Map a taming-transformers training YAML (model / data / lightning) to the native layout."""
    b = NativeBuilder("taming")
    check_keys(raw, ("model", "data", "lightning"), "<root>")
    model = section(raw, "model", "model")
    check_keys(model, ("target", "params", "base_learning_rate", "project"), "model")
    if "target" not in model:
        raise ConfigError("model.target", "is missing",
                          f"add target: taming.models.vqgan.<one of {', '.join(MODEL_TARGETS)}>")
    variant = class_name(model["target"], "model.target")
    if variant not in MODEL_TARGETS:
        raise ConfigError("model.target", f"{model['target']!r} is not a supported model; supported: "
                          + ", ".join(f"taming.models.vqgan.{t}" for t in MODEL_TARGETS),
                          "use one of those targets (or write a native vqforge config)")
    b.put("model.family", "taming", "model.target")
    b.put("model.variant", variant, "model.target")
    if "project" in model:
        b.note("model.project: not used (taming ignores it too); the wandb project is log.project")
    if "base_learning_rate" in model:
        b.put("train.base_learning_rate", model["base_learning_rate"], "model.base_learning_rate")

    params = section(model, "params", "model.params")
    check_keys(params, MODEL_PARAMS[variant], "model.params")
    for req in ("ddconfig", "n_embed", "embed_dim"):
        if req not in params:
            raise ConfigError(f"model.params.{req}", "is missing", f"give {req} (taming's {variant} requires it)")
    b.put("model.n_embed", params["n_embed"], "model.params.n_embed")
    b.put("model.embed_dim", params["embed_dim"], "model.params.embed_dim")
    b.put_tree("model.ddconfig", params["ddconfig"], "model.params.ddconfig")
    reachable_attention(b, params, "model.params")
    if params.get("ckpt_path") is not None:
        b.put("model.init_from", params["ckpt_path"], "model.params.ckpt_path")
    ignore = params.get("ignore_keys")
    if ignore is not None:
        if not isinstance(ignore, list):
            raise ConfigError("model.params.ignore_keys", f"expected a list, got {ignore!r}", "write [] or remove it")
        if ignore:
            raise ConfigError("model.params.ignore_keys", f"{ignore!r}: vqforge loads weights strictly and never drops keys",
                              "remove ignore_keys; to start from partial weights, convert the checkpoint first "
                              "(vqforge convert) and fix the mismatch it reports")
    no_effect = [k for k in _NO_EFFECT_PARAMS if params.get(k) not in (None, False)]
    for k in no_effect:
        b.note(f"model.params.{k}: no effect ({_NO_EFFECT_PARAMS[k]})")

    if variant == "GumbelVQ":
        if "kl_weight" in params:
            b.put("model.quantizer.kl_weight", params["kl_weight"], "model.params.kl_weight")
        else:
            b.default("model.quantizer.kl_weight", _GUMBEL_KL_WEIGHT)
        if "temperature_scheduler_config" not in params:
            raise ConfigError("model.params.temperature_scheduler_config", "is missing (GumbelVQ requires it)",
                              "add a LambdaWarmUpCosineScheduler block, as in taming's GumbelVQ configs")
        _map_temperature(b, params["temperature_scheduler_config"], "model.params.temperature_scheduler_config")

    if "lossconfig" in params:
        kind = map_lossconfig(b, params["lossconfig"], "model.params.lossconfig", allow_dummy=True)
        if kind == "gan":
            # taming always trains the discriminator of VQLPIPSWithDiscriminator
            b.default("loss.use_gan", True)
    else:
        b.note("model.params.lossconfig: not given; vqforge's default loss settings (loss.*) apply")

    _map_data(b, section(raw, "data", "data"))
    _map_lightning(b, section(raw, "lightning", "lightning"))

    ddc = params["ddconfig"]
    if isinstance(ddc, dict) and isinstance(ddc.get("resolution"), int) and not isinstance(ddc.get("resolution"), bool):
        b.default("data.resolution", ddc["resolution"])
    return b.result()


def _map_data(b: NativeBuilder, data: dict) -> None:
    if not data:
        return
    check_keys(data, ("target", "params"), "data")
    params = section(data, "params", "data.params")
    check_keys(params, _DATA_PARAMS, "data.params")
    if "batch_size" in params:
        b.put("data.batch_size", params["batch_size"], "data.params.batch_size")
    if "num_workers" in params:
        b.put("data.num_workers", params["num_workers"], "data.params.num_workers")
    for split in ("train", "validation"):
        found = _crop_size(params.get(split), f"data.params.{split}")
        if found is not None:
            b.put("data.resolution", found[0], found[1],
                  fix="give the train and validation datasets the same size: vqforge trains and validates at one "
                      "data.resolution")
    for split, native in (("train", "data.train"), ("validation", "data.val"), ("test", None)):
        block = params.get(split)
        if block is None:
            continue
        target = block.get("target") if isinstance(block, dict) else block
        where = f"the images with {native} (e.g. --set '{native}=[DIR]')" if native else "nothing (no test split)"
        b.note(f"data.params.{split} ({target}): the dataset class is not used; vqforge reads {where}")
    if params.get("wrap"):
        b.note("data.params.wrap: no effect")


def _map_lightning(b: NativeBuilder, lightning: dict) -> None:
    if not lightning:
        return
    ignored = [f"lightning.{k}" for k in lightning if k != "trainer"]
    trainer = lightning.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ConfigError("lightning.trainer", f"expected a mapping, got {trainer!r}", "write key: value pairs")
    for k, v in (trainer or {}).items():
        if k == "max_steps" and v is not None and v != -1:
            b.put("train.num_steps", v, "lightning.trainer.max_steps")
        elif k == "accumulate_grad_batches":
            b.put("train.grad_accum_steps", v, "lightning.trainer.accumulate_grad_batches")
        else:
            ignored.append(f"lightning.trainer.{k}")
    if ignored:
        b.note("lightning: ignored (vqforge does not use PyTorch Lightning): " + ", ".join(ignored))


__all__ = ["taming_to_native", "map_lossconfig", "LOSS_PARAMS", "MODEL_TARGETS", "MODEL_PARAMS"]
