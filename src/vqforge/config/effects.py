"""Settings that have no effect under the chosen options ("disc_weight with use_gan: false").

Only fields the user set explicitly (`Config._explicit`) are reported: a default that does nothing is not news.
`load_config` turns the list into one `ConfigWarning`.
"""

from __future__ import annotations

from ..errors import ConfigError
from .schema import Config

GAN_FIELDS = (
    "loss.disc_loss", "loss.disc_start", "loss.disc_factor", "loss.disc_weight", "loss.disc_num_layers",
    "loss.disc_ndf", "loss.disc_in_channels", "loss.disc_norm",
    "train.disc_lr", "train.disc_betas", "train.disc_update_every", "train.disc_warmup_steps", "train.disc_lr_schedule",
)
_Q = "model.quantizer."
EMA_FIELDS = (_Q + "decay", _Q + "eps")
GUMBEL_FIELDS = tuple(_Q + f for f in ("kl_weight", "straight_through", "temperature_start", "temperature_end",
                                      "temperature_anneal_steps", "temperature_schedule"))
MAINTENANCE_FIELDS = tuple(_Q + f for f in ("kmeans_init", "kmeans_iters", "kmeans_batches", "restart_unused_steps",
                                            "restart_min_uses"))
RESIDUAL_FIELDS = (_Q + "rvq_levels", _Q + "shared_codebook")
VALIDATION_FIELDS = ("data.val_batch_size", "data.max_val_samples", "train.validation_interval",
                     "train.val_max_batches", "train.best_metric")


FSQ_FIELDS = (_Q + "fsq_levels",)
LFQ_FIELDS = tuple(_Q + f for f in ("lfq_sample_entropy_weight", "lfq_batch_entropy_weight", "lfq_temperature",
                                   "lfq_entropy_groups"))
SIMVQ_FIELDS = (_Q + "simvq_codebook_std",)
TYPED_QUANTIZERS = ("fsq", "simvq", "lfq")


def flag_typed_quantizer_fields(flag, cfg: Config, qtype: str | None) -> None:
    """FSQ / LFQ / SimVQ fields outside their type, and the codebook fields those types do not read."""
    for t, fields in (("fsq", FSQ_FIELDS), ("lfq", LFQ_FIELDS), ("simvq", SIMVQ_FIELDS)):
        if qtype != t:
            flag(fields, f"model.quantizer.type is {qtype!r}; this setting applies to type {t!r} only")
    if qtype not in TYPED_QUANTIZERS:
        return
    reason = f"model.quantizer.type is {qtype!r}, which has no learned codebook to update or maintain"
    flag(EMA_FIELDS + GUMBEL_FIELDS + MAINTENANCE_FIELDS + (_Q + "legacy",), reason)
    if qtype == "fsq":
        flag([_Q + "beta"], "model.quantizer.type is 'fsq', which has no auxiliary loss")
        size = "model.vqvae2.nb_entries" if cfg.model.family == "vqvae2" else "model.n_embed"
        flag([size], "model.quantizer.type is 'fsq': K is the product of model.quantizer.fsq_levels")


class ConfigWarning(UserWarning):
    """Settings in a config that have no effect (or were read in a way worth knowing). One warning per load."""


def ineffective(cfg: Config) -> list[tuple[str, str]]:
    """(path, reason) for every explicitly set field that has no effect under the config's other choices."""
    explicit = cfg._explicit
    out: dict[str, str] = {}

    def flag(paths, reason: str) -> None:
        for p in paths:
            if p in explicit and p not in out:
                out[p] = reason

    def flag_section(prefix: str, reason: str) -> None:
        flag(sorted(e for e in explicit if e.startswith(prefix + ".")), reason)

    m, q, loss, tr, data = cfg.model, cfg.model.quantizer, cfg.loss, cfg.train, cfg.data
    if not loss.use_gan:
        flag(GAN_FIELDS, "loss.use_gan is false, so no discriminator is built or trained")
    if loss.perceptual_weight == 0:
        flag(["loss.vgg_path"], "loss.perceptual_weight is 0, so LPIPS (and its VGG16) is not used")
    if loss.pixelloss_weight == 0:
        flag(["loss.pixel_loss"], "loss.pixelloss_weight is 0, so there is no pixel loss")

    try:
        qtype = m.quantizer_choice().type
    except ConfigError:
        qtype = None  # reported by validation; nothing to say about effects
    flag_typed_quantizer_fields(flag, cfg, qtype)
    # taming's base model with an explicit ema / gumbel type: the type decides what applies, as that variant would
    typed_base = m.family in ("taming", "patch") and q.type is not None and m.variant == "VQModel" and qtype in ("ema", "gumbel")
    if typed_base:
        other = "EMAVQ" if qtype == "ema" else "GumbelVQ"
        flag(GUMBEL_FIELDS if qtype == "ema" else EMA_FIELDS + MAINTENANCE_FIELDS + (_Q + "beta", _Q + "legacy"),
             f"model.quantizer.type is {qtype!r} (as variant {other}), for which this setting does nothing")
    for fam in ("vqvae2", "vqvae2_optvq", "dalle_vqvae", "patch"):
        if m.family != fam:
            flag_section(f"model.{fam}", f"model.family is {m.family}; model.{fam} configures the {fam} family only")
    if m.family in ("vqvae2_optvq", "dalle_vqvae"):
        reason = f"model.family is {m.family}; it is configured by model.{m.family} alone"
        flag(["model.n_embed", "model.embed_dim"], reason)
        flag_section("model.ddconfig", reason)
        flag_section("model.quantizer", reason)
    elif m.family in ("taming", "patch"):
        if m.family == "patch":
            flag_section("model.ddconfig", "model.family is patch; its network is configured by model.patch")
        if qtype in TYPED_QUANTIZERS or typed_base:
            pass  # flagged above
        elif m.variant == "VQModel":
            flag(EMA_FIELDS, "model.variant is VQModel; only EMAVQ (and VQ-VAE-2) codebooks are updated by EMA")
            flag(GUMBEL_FIELDS, "model.variant is VQModel; Gumbel-softmax settings apply to GumbelVQ only")
        elif m.variant == "EMAVQ":
            flag(GUMBEL_FIELDS, "model.variant is EMAVQ; Gumbel-softmax settings apply to GumbelVQ only")
            flag([_Q + "legacy"], "model.variant is EMAVQ; its codebook is updated by EMA, so there is no codebook "
                                  "term whose beta placement `legacy` could change")
        elif m.variant == "PQEMAVQ":
            flag(GUMBEL_FIELDS + (_Q + "legacy",),
                 "model.variant is PQEMAVQ: EMA codebooks per subspace, without Gumbel or legacy settings")
        elif m.variant == "GumbelVQ":
            flag(EMA_FIELDS, "model.variant is GumbelVQ; only EMAVQ (and VQ-VAE-2) codebooks are updated by EMA")
            flag([_Q + "beta", _Q + "legacy"], "model.variant is GumbelVQ, which has no commitment loss")
            flag(MAINTENANCE_FIELDS, "model.variant is GumbelVQ; codebook maintenance applies to VQModel and EMAVQ")
            if q.temperature_anneal_steps == 0:
                flag([_Q + "temperature_end", _Q + "temperature_schedule"],
                     "model.quantizer.temperature_anneal_steps is 0, so the temperature stays at temperature_start")
    else:
        reason = "model.family is vqvae2; it is configured by model.vqvae2 (nb_entries, embed_dim, ...)"
        flag(["model.n_embed", "model.embed_dim"], reason)
        flag_section("model.ddconfig", reason)
        if qtype in (None, "ema"):
            flag(GUMBEL_FIELDS + (_Q + "legacy",), "model.family is vqvae2, whose levels use plain EMA codebooks")
        flag(RESIDUAL_FIELDS, "model.family is vqvae2, which has one codebook per level")
    if not q.kmeans_init:
        flag([_Q + "kmeans_iters", _Q + "kmeans_batches"], "model.quantizer.kmeans_init is false")
    if q.restart_unused_steps == 0:
        flag([_Q + "restart_min_uses"], "model.quantizer.restart_unused_steps is 0 (restarts are off)")
    if q.rvq_levels == 1:
        flag([_Q + "shared_codebook"], "model.quantizer.rvq_levels is 1 (one codebook, nothing to share)")
        flag([_Q + "rvq_loss", _Q + "quantize_dropout"], "model.quantizer.rvq_levels is 1 (no residual depths)")
    if qtype != "product":
        flag([_Q + "num_subspaces"], "num_subspaces applies to variant PQEMAVQ (product quantization) only")

    if tr.lr_schedule != "exponential":
        flag(["train.lr_decay", "train.lr_decay_every"],
             f"train.lr_schedule is {tr.lr_schedule!r}; lr_decay applies to the exponential schedule only")
    if tr.lr_schedule != "cosine":
        flag(["train.min_lr"], f"train.lr_schedule is {tr.lr_schedule!r}; min_lr applies to the cosine schedule only")

    if data.source == "sample_photos":
        flag(["data.train", "data.val"], "data.source is sample_photos, which brings its own train/val split")
    else:
        flag(["data.sample_photos", "data.sample_val_tiles"], "data.source is not sample_photos")
        if not data.val:
            flag(VALIDATION_FIELDS, "data.val is empty, so there is no validation")
    if data.sequence_length == 1 or data.use_images:
        flag(["data.frame_stride"], "frame_stride applies to video clips of more than one frame")
    if not cfg.log.wandb:
        flag(["log.project"], "log.wandb is false")
    return list(out.items())


def ineffective_settings(cfg: Config) -> list[str]:
    """One line per explicitly set field that has no effect: 'path: has no effect: reason'."""
    return [f"{p}: has no effect: {why}" for p, why in ineffective(cfg)]


__all__ = ["ConfigWarning", "ineffective", "ineffective_settings", "GAN_FIELDS"]
