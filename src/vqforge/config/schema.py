"""The one internal config schema. Native YAML/JSON files write it directly; the seed and taming readers map into it.

Each section is a small dataclass that validates its own ranges (`check`); `Config.check` validates what spans
sections. Field comments are the user-facing documentation of each knob (README links here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .parse import require

Family = Literal["taming", "patch", "vqvae2", "vqvae2_optvq", "dalle_vqvae"]
Variant = Literal["VQModel", "EMAVQ", "GumbelVQ", "PQEMAVQ"]
QuantizerType = Literal["vq", "ema", "gumbel", "residual", "product", "fsq", "simvq", "lfq"]

# model_type aliases from the user's seed format -> family
FAMILY_ALIASES: dict[str, Family] = {
    "taming": "taming",
    "TamingVQGAN": "taming",
    "taming_vqgan": "taming",
    "VQGAN": "taming",
    "vqgan": "taming",
    "EMAVQ": "taming",
    "emavq": "taming",
    "TamingVQModel": "taming",
    "taming_vqmodel": "taming",
    "vqvae2": "vqvae2",
    "VQVAE2": "vqvae2",
    # VQ-VAE-2 with optimal-transport (Sinkhorn) code assignment
    "vqvae2_optvq": "vqvae2_optvq",
    "vqvae2optvq": "vqvae2_optvq",
    "VQVAE2_OptVQ": "vqvae2_optvq",
    "Vqvae2OptVQ": "vqvae2_optvq",
    # the user's single-level VqVae (their `VqVae2` class: VQGAN-style encoder/decoder + EMA codebook); the user's
    # registry sent `vqvaeoptvq` to that class with the OptVQ (Sinkhorn) quantizer, not to the VQ-VAE-2 OptVQ
    # family: the seed readers set model.dalle_vqvae.quantizer: optvq for it (config/seed.py map_model_type)
    "vqvaeoptvq": "dalle_vqvae",
    "dalle_vqvae": "dalle_vqvae",
    "VqVae": "dalle_vqvae",
    "vq_vae": "dalle_vqvae",
    "vqvae": "dalle_vqvae",
}
# model_type names of the user's previous registry whose family vqforge does not have (none left: every family of
# that registry is built); the seed readers raise a ConfigError that says so plainly for a name listed here.
PENDING_FAMILY_ALIASES: dict[str, tuple[str, str]] = {}
VARIANTS_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "taming": ("VQModel", "EMAVQ", "GumbelVQ", "PQEMAVQ"), "patch": ("VQModel", "EMAVQ", "GumbelVQ", "PQEMAVQ"),
    "vqvae2": (), "vqvae2_optvq": (), "dalle_vqvae": (),
}
# families whose indices are one map per level (coarsest first) and whose architecture lives in model.vqvae2-like
# sections with scaling_rates
HIERARCHICAL_FAMILIES = ("vqvae2", "vqvae2_optvq")


def _power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


@dataclass
class DDConfig:
    """taming-transformers Encoder/Decoder settings (same names and defaults as taming's configs)."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.0
    resamp_with_conv: bool = True
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def attention_resolutions_in_use(self) -> list[int]:
        return [self.resolution // 2**i for i in range(len(self.ch_mult))]

    def check(self, path: str) -> None:
        p = path or "ddconfig"
        require(self.ch > 0, f"{p}.ch", f"must be positive, got {self.ch}", "set ch to e.g. 128")
        require(len(self.ch_mult) > 0, f"{p}.ch_mult", "is empty", "give at least one multiplier, e.g. [1, 1, 2, 2, 4]")
        require(all(m > 0 for m in self.ch_mult), f"{p}.ch_mult", f"entries must be positive, got {self.ch_mult}",
                "use positive multipliers")
        require(self.num_res_blocks >= 1, f"{p}.num_res_blocks", f"must be >= 1, got {self.num_res_blocks}",
                "set num_res_blocks to 1 or more")
        require(0.0 <= self.dropout < 1.0, f"{p}.dropout", f"must be in [0, 1), got {self.dropout}", "use e.g. 0.0")
        require(self.in_channels > 0, f"{p}.in_channels", "must be positive", "set in_channels to 3 for RGB")
        require(self.out_ch > 0, f"{p}.out_ch", "must be positive", "set out_ch to 3 for RGB")
        require(self.z_channels > 0, f"{p}.z_channels", "must be positive", "set z_channels to e.g. 256")
        widths = sorted({self.ch, *(self.ch * m for m in self.ch_mult)})
        bad = [w for w in widths if w % 32]
        require(not bad, f"{p}.ch", f"channel widths {bad} (ch × ch_mult) are not multiples of 32, the GroupNorm group count",
                "use a ch that is a multiple of 32, e.g. 64 or 128")
        f = self.downsample_factor
        require(self.resolution > 0 and self.resolution % f == 0, f"{p}.resolution",
                f"{self.resolution} is not divisible by the downsampling factor {f} (2^(len(ch_mult)-1))",
                f"use a resolution that is a multiple of {f}, or fewer ch_mult entries")
        used = self.attention_resolutions_in_use()
        bad = [r for r in self.attn_resolutions if r not in used]
        # (the seed and taming readers drop such entries with a warning before this check, as both reference systems
        # silently build no attention there; natively it is an error)
        require(not bad, f"{p}.attn_resolutions", f"{bad} never occur: this encoder works at resolutions {used}",
                f"pick attention resolutions from {used}, or [] for none")


@dataclass
class QuantizerConfig:
    """Quantizer settings. Which fields apply depends on model.variant (unused ones are warned about)."""

    beta: float = 0.25  # commitment weight (VQModel, EMAVQ, residual)
    legacy: bool = True  # taming's placement of beta (on the codebook term instead of the commitment term)
    decay: float = 0.99  # EMA codebook decay (EMAVQ, VQ-VAE-2)
    eps: float = 1.0e-5  # EMA Laplace smoothing epsilon
    # Gumbel-softmax (GumbelVQ)
    kl_weight: float = 5.0e-4
    straight_through: bool = True
    temperature_start: float = 1.0
    temperature_end: float = 0.0625
    temperature_anneal_steps: int = 0  # 0: constant temperature_start
    temperature_schedule: Literal["cosine", "linear", "exponential"] = "cosine"
    # residual VQ: depth D (1 = plain VQ), one codebook shared by all levels or one per level
    rvq_levels: int = 1
    shared_codebook: bool = False
    # residual loss: per_level = Σ_d beta·mse(sg[q_d], r_(d-1)); prefix = beta·Σ_d mse(sg[q_1+…+q_d], z) (the user's
    # RVQ-VQGAN; needs variant EMAVQ and shared_codebook: true, keys quantize.embedding.*)
    rvq_loss: Literal["per_level", "prefix"] = "per_level"
    # random-depth training: probability that a training step quantizes (and decodes) only a random prefix depth
    # d ~ U{1..rvq_levels}; drawn from the step, so identical on all ranks and after a resume. 0 = off
    quantize_dropout: float = 0.0
    # product quantization (variant PQEMAVQ): embed_dim split into this many contiguous subspaces, one EMA codebook of
    # n_embed codes each (decay/eps above); S·log2(n_embed) bits per position
    num_subspaces: int = 4
    # codebook maintenance (VQModel, EMAVQ; off by default for taming equivalence)
    kmeans_init: bool = False
    kmeans_iters: int = 10
    # how many first training micro-batches (at least) feed the k-means initialisation; more are collected until
    # there are 4 encoder vectors per code over all ranks
    kmeans_batches: int = 1
    # restart codes unused for this many training forwards (micro-batches, so grad_accum_steps x optimizer steps)
    # with recent encoder outputs; 0 = off
    restart_unused_steps: int = 0
    # what "used" means for restarts: assigned at least this many vectors in a training forward (over all ranks);
    # above 1, codes that stay rare are re-seeded too, not only codes that nobody takes
    restart_min_uses: int = 1
    # which quantizer, for any family (README "Quantizers"); null = the one model.variant implies (VQModel: vq,
    # EMAVQ: ema, GumbelVQ: gumbel; rvq_levels > 1 makes those residual), VQ-VAE-2: ema
    type: QuantizerType | None = None
    # FSQ: integer levels per latent channel; K = their product (default 1000 codes; [8, 8, 8, 5, 5, 5] = 64,000)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    # LFQ (K = n_embed = 2^d codes of d sign bits): weight of the mean per-token code entropy (minimised: confident
    # tokens) and of the batch entropy of the mean code distribution (maximised: every code used); commitment: beta
    lfq_sample_entropy_weight: float = 0.1
    lfq_batch_entropy_weight: float = 0.1
    lfq_temperature: float = 0.01  # τ of p(c|z) = softmax(-||z - c||² / τ) in the entropy terms
    lfq_entropy_groups: int = 1  # batch entropy over G groups of d/G bits (cheaper, factorized); 1 = exact over K
    # SimVQ: std of the frozen random codebook (a learned linear layer maps it); null = embed_dim^-0.5, the paper's
    simvq_codebook_std: float | None = None
    # factorised codes (types vq and ema, one level): a codebook of this many columns, with learned linear maps from
    # and to embed_dim around the assignment (ViT-VQGAN); null = embed_dim
    codebook_dim: int | None = None
    # cosine-similarity codes (types vq and ema, one level): inputs and codebook rows are l2-normalised before the
    # assignment, so codes and commitment loss live on the unit sphere (ViT-VQGAN, Improved VQGAN)
    use_cosine_sim: bool = False

    def check(self, path: str) -> None:
        p = path or "quantizer"
        bad_levels = [v for v in self.fsq_levels if v < 2]
        require(bool(self.fsq_levels) and not bad_levels, f"{p}.fsq_levels",
                f"must be a non-empty list of integers >= 2, got {self.fsq_levels}", "use e.g. [8, 5, 5, 5] (K = 1000)")
        require(self.lfq_sample_entropy_weight >= 0, f"{p}.lfq_sample_entropy_weight", "must be >= 0", "use e.g. 0.1")
        require(self.lfq_batch_entropy_weight >= 0, f"{p}.lfq_batch_entropy_weight", "must be >= 0", "use e.g. 0.1")
        require(self.lfq_temperature > 0, f"{p}.lfq_temperature", f"must be > 0, got {self.lfq_temperature}", "use e.g. 0.01")
        require(self.lfq_entropy_groups >= 1, f"{p}.lfq_entropy_groups", "must be >= 1", "use 1 (exact) or e.g. 2")
        require(self.simvq_codebook_std is None or self.simvq_codebook_std > 0, f"{p}.simvq_codebook_std",
                "must be > 0", "use null for the paper's embed_dim^-0.5")
        require(self.codebook_dim is None or self.codebook_dim >= 1, f"{p}.codebook_dim",
                f"must be >= 1, got {self.codebook_dim}", "use e.g. 32, or null for embed_dim")
        require(self.beta >= 0, f"{p}.beta", f"must be >= 0, got {self.beta}", "use e.g. 0.25")
        require(0.0 < self.decay < 1.0, f"{p}.decay", f"must be in (0, 1), got {self.decay}", "use e.g. 0.99")
        require(self.eps > 0, f"{p}.eps", f"must be > 0, got {self.eps}", "use e.g. 1e-5")
        require(self.kl_weight >= 0, f"{p}.kl_weight", "must be >= 0", "use e.g. 5e-4")
        require(self.temperature_start > 0 and self.temperature_end > 0, f"{p}.temperature_start",
                "temperatures must be > 0", "use e.g. temperature_start 1.0 and temperature_end 0.0625")
        require(self.temperature_anneal_steps >= 0, f"{p}.temperature_anneal_steps", "must be >= 0", "use 0 for constant")
        require(self.rvq_levels >= 1, f"{p}.rvq_levels", f"must be >= 1, got {self.rvq_levels}", "use 1 for plain VQ")
        require(0.0 <= self.quantize_dropout <= 1.0, f"{p}.quantize_dropout",
                f"must be a probability in [0, 1], got {self.quantize_dropout}", "use e.g. 1.0 (every step) or 0 (off)")
        require(self.num_subspaces >= 1, f"{p}.num_subspaces", f"must be >= 1, got {self.num_subspaces}", "use e.g. 4")
        require(self.kmeans_iters >= 1, f"{p}.kmeans_iters", "must be >= 1", "use e.g. 10")
        require(self.kmeans_batches >= 1, f"{p}.kmeans_batches", "must be >= 1", "use e.g. 1")
        require(self.restart_unused_steps >= 0, f"{p}.restart_unused_steps", "must be >= 0", "use 0 to disable")
        require(self.restart_min_uses >= 1, f"{p}.restart_min_uses", f"must be >= 1, got {self.restart_min_uses}",
                "use 1 (restart codes nobody used) or more (also codes that stay rare)")


@dataclass
class VQVAE2Config:
    """Hierarchical VQ-VAE-2 (Razavi et al. 2019), with the user's parameter names."""

    in_channels: int = 3
    hidden_channels: int = 128
    res_channels: int = 32
    nb_res_layers: int = 2
    nb_levels: int = 2
    embed_dim: int = 64
    nb_entries: int = 512
    scaling_rates: list[int] = field(default_factory=lambda: [4, 2])

    def check(self, path: str) -> None:
        p = path or "vqvae2"
        for name in ("in_channels", "hidden_channels", "res_channels", "embed_dim"):
            require(getattr(self, name) > 0, f"{p}.{name}", "must be positive", f"set {name} to a positive integer")
        require(self.hidden_channels >= 2, f"{p}.hidden_channels", f"must be >= 2, got {self.hidden_channels}",
                "use e.g. 128 (the encoders halve it)")
        require(self.nb_res_layers >= 0, f"{p}.nb_res_layers", "must be >= 0", "use e.g. 2")
        require(self.nb_levels >= 1, f"{p}.nb_levels", f"must be >= 1, got {self.nb_levels}", "use e.g. 2")
        require(self.nb_entries >= 2, f"{p}.nb_entries", f"must be >= 2, got {self.nb_entries}", "use e.g. 512")
        require(len(self.scaling_rates) == self.nb_levels, f"{p}.scaling_rates",
                f"has {len(self.scaling_rates)} entries but nb_levels is {self.nb_levels}",
                "give one scaling rate per level (coarsest level last), or change nb_levels")
        bad = [r for r in self.scaling_rates if not _power_of_two(r) or r < 2]
        require(not bad, f"{p}.scaling_rates", f"{bad} are not powers of two >= 2", "use rates such as 2, 4 or 8")

    @property
    def total_downsample(self) -> int:
        """Input pixels per coarsest-level token along each side: the product of scaling_rates."""
        return math.prod(self.scaling_rates)

    @property
    def downsample_factor(self) -> int:
        """Input pixels per token of the coarsest level along each side (`total_downsample`)."""
        return self.total_downsample


# quantizer type each taming variant implies; VQModel (taming's base model) also takes any explicit type
VARIANT_QUANTIZER: dict[str, str] = {"VQModel": "vq", "EMAVQ": "ema", "GumbelVQ": "gumbel", "PQEMAVQ": "product"}
# explicit model.quantizer.type values a variant accepts (its own, and residual stacks of its kind)
VARIANT_ALLOWS: dict[str, tuple[str, ...]] = {
    "VQModel": ("vq", "ema", "gumbel", "residual", "product", "fsq", "simvq", "lfq"),
    "EMAVQ": ("ema", "residual"),
    "GumbelVQ": ("gumbel",),
    "PQEMAVQ": ("product",),
}
# types whose indices are one (B, H, W) map, as every VQ-VAE-2 level needs
VQVAE2_QUANTIZERS = ("vq", "ema", "gumbel", "fsq", "simvq", "lfq")


@dataclass(frozen=True)
class QuantizerChoice:
    """The quantizer a model config selects: `type`, and for residual stacks the kind of each level."""

    type: str  # one of QuantizerType, never null here
    residual_kind: str = "vq"  # "vq" or "ema" (residual only)


def resolve_quantizer(family: str, variant: str | None, q: "QuantizerConfig", n_codes: int,
                      path: str = "model") -> QuantizerChoice:
    """model.quantizer.type, or what the variant implies; ConfigError for contradictions and impossible pairs.

    n_codes: the config's codebook size (taming n_embed, VQ-VAE-2 nb_entries), checked where the type needs it.
    """
    qp = f"{path}.quantizer"
    t = q.type
    if family in ("vqvae2_optvq", "dalle_vqvae"):
        # these families bring their own quantizer (Sinkhorn assignment / the user's EMA codebook)
        require(t is None, f"{qp}.type", f"is {t!r}, but model.family {family} has its own quantizer",
                f"remove model.quantizer.type, or use model.family: taming or vqvae2 for a {t!r} quantizer")
        for name in ("codebook_dim", "use_cosine_sim"):
            require(getattr(q, name) in (None, False), f"{qp}.{name}", f"does not apply to model.family {family} "
                    "(it brings its own quantizer)", f"remove {name}, or use model.family: taming or vqvae2")
        return QuantizerChoice("ema" if family == "dalle_vqvae" else "vq")
    if family == "vqvae2":
        t = t or "ema"
        require(t in VQVAE2_QUANTIZERS, f"{qp}.type",
                f"{t!r} is not available for VQ-VAE-2: each of its levels needs one (B, H, W) index map",
                f"use one of {list(VQVAE2_QUANTIZERS)}, or model.family: taming")
        require(q.rvq_levels == 1, f"{qp}.rvq_levels",
                "residual quantization is a taming-family option; VQ-VAE-2 has one codebook per level",
                "remove rvq_levels, or use model.family: taming")
        kind = "vq"
    else:
        implied = VARIANT_QUANTIZER.get(variant or "", "vq")
        allowed = VARIANT_ALLOWS.get(variant or "", VARIANT_ALLOWS["VQModel"])
        if t is not None and t not in allowed:
            raise ConfigError(
                f"{qp}.type", f"is {t!r}, but model.variant {variant!r} means the {implied!r} quantizer",
                f"remove model.quantizer.type (or set it to {implied!r}), or set model.variant: VQModel "
                f"(taming's base model, which takes any quantizer type) to use {t!r}")
        kind = "ema" if (t == "ema" or (t in (None, "residual") and implied == "ema")) else "vq"
        if t is None:
            t = implied
        if t in ("vq", "ema") and q.rvq_levels > 1:
            t = "residual"
        if t == "residual":
            require(q.rvq_levels > 1, f"{qp}.rvq_levels", f"is {q.rvq_levels}, but type 'residual' stacks several levels",
                    "set model.quantizer.rvq_levels to the depth, e.g. 4 (or use type vq / ema for one level)")
    # the one check of rvq_levels against the quantizer (GumbelVQ, PQEMAVQ, fsq, ...); model builders rely on it
    if t != "residual" and q.rvq_levels > 1:
        raise ConfigError(f"{qp}.rvq_levels", f"residual quantization is not available with quantizer type {t!r}",
                          "use type vq or ema (variant VQModel or EMAVQ) for residual VQ, or rvq_levels: 1")
    for name, on in (("codebook_dim", q.codebook_dim is not None), ("use_cosine_sim", q.use_cosine_sim)):
        require(not on or t in ("vq", "ema"), f"{qp}.{name}",
                f"applies to the vq and ema quantizers (one level), but the quantizer is {t!r}",
                f"remove {name}, or use quantizer type vq or ema with rvq_levels: 1")
    if t == "lfq":
        size_key = f"{path}.vqvae2.nb_entries" if family == "vqvae2" else f"{path}.n_embed"
        require(n_codes >= 2 and n_codes & (n_codes - 1) == 0, size_key,
                f"is {n_codes}, but LFQ codes are d sign bits, so K must be a power of two",
                "use e.g. 16384 (14 bits) or 262144 (18 bits)")
        bits = n_codes.bit_length() - 1
        require(q.lfq_entropy_groups <= bits, f"{qp}.lfq_entropy_groups",
                f"is {q.lfq_entropy_groups}, more groups than the {bits} bits of K = {n_codes}",
                f"use 1 (exact) up to {bits}")
    return QuantizerChoice(t, kind)


@dataclass
class VQVAE2OptVQConfig(VQVAE2Config):
    """VQ-VAE-2 whose codes are assigned by a Sinkhorn optimal-transport solve (OptVQ, Zhang et al. 2024).

    Architecture fields as VQVAE2Config, with this family's own defaults (3 levels, scaling_rates [8, 4, 2]). Each
    level's quantizer: codebook `embedding` (K, embed_dim), optionally seen through a learned linear `proj`; in
    training the batch's distance matrix is normalised and turned into a balanced soft assignment by Sinkhorn
    iterations, from which each code is sampled (use_prob) or taken as the argmax; in eval mode the nearest code.
    """

    nb_levels: int = 3
    scaling_rates: list[int] = field(default_factory=lambda: [8, 4, 2])
    epsilon: float = 10.0  # Sinkhorn inverse temperature: assignment weights exp(−epsilon · normalised distance)
    n_iters: int = 5  # Sinkhorn row/column normalisation rounds
    normalize_mode: Literal["all", "dim", "null"] = "all"  # distances: standardise+shift / divide by sqrt(dim) / raw
    use_prob: bool = True  # training: sample each code from the transport plan (false: its argmax)
    beta: float = 1.0  # weight of the codebook term for loss_q_type l2/l1 (unused by ce)
    loss_q_type: Literal["ce", "l2", "l1"] = "ce"  # ce: cross-entropy of −distances at the chosen codes
    use_proj: bool = True  # codebook = proj(embedding.weight), a learned linear map

    def check(self, path: str) -> None:
        p = path or "vqvae2_optvq"
        require(len(self.scaling_rates) == self.nb_levels, f"{p}.scaling_rates",
                f"has {len(self.scaling_rates)} entries {self.scaling_rates} but nb_levels is {self.nb_levels} "
                "(this family's default is 3 levels with scaling_rates [8, 4, 2])",
                f"set nb_levels to {len(self.scaling_rates)}, or give {self.nb_levels} scaling rates (coarsest last)")
        super().check(p)
        require(self.epsilon > 0, f"{p}.epsilon", f"must be > 0, got {self.epsilon}", "use e.g. 10.0")
        require(self.n_iters >= 0, f"{p}.n_iters", f"must be >= 0, got {self.n_iters}", "use e.g. 5")
        require(self.beta >= 0, f"{p}.beta", f"must be >= 0, got {self.beta}", "use e.g. 1.0")


@dataclass
class PatchConfig:
    """The patch family's network (models/patch.py): space-to-depth by `factor`, 1x1 convolutions to `channels`,
    `num_blocks` gated residual blocks (GroupNorm-Swish, 3x3) at the token grid in the encoder and again in the
    decoder, depth-to-space back. With num_blocks 0 the encoder and decoder are linear patch transforms."""

    factor: int = 4  # downsampling factor f: one token per f x f pixel patch
    channels: int = 128  # width of the token-grid features
    num_blocks: int = 2  # gated residual blocks per side
    in_channels: int = 3
    out_channels: int = 3

    @property
    def downsample_factor(self) -> int:
        return self.factor

    def check(self, path: str) -> None:
        p = path or "model.patch"
        require(self.factor >= 1, f"{p}.factor", f"must be >= 1, got {self.factor}", "use e.g. 4 or 8")
        require(self.channels >= 32 and self.channels % 32 == 0, f"{p}.channels",
                f"{self.channels} is not a positive multiple of 32 (the GroupNorm group count)", "use e.g. 128")
        require(self.num_blocks >= 0, f"{p}.num_blocks", f"must be >= 0, got {self.num_blocks}", "use e.g. 2")
        for name in ("in_channels", "out_channels"):
            v = getattr(self, name)
            require(v >= 1, f"{p}.{name}", f"must be >= 1, got {v}", "use 3 for RGB")


@dataclass
class DalleVQVAEConfig:
    """The user's single-level `VqVae` (model_type VqVae / vq_vae / vqvae): a VQGAN-style encoder and decoder
    (GroupNorm-Swish residual blocks, attention at the deepest level) around one EMA codebook.

    Encoder widths `channels` (the user's model: [128, 128, 128, 256, 256, 512], downsampling 2^(len-2) = 16);
    the decoder mirrors them (channels[1:] reversed).
    """

    input_channels: int = 3
    n_init: int = 128  # code dimension (encoder output channels)
    vocab_size: int = 8192  # codebook size K
    commitment_cost: float = 0.25
    decay: float = 0.99  # EMA codebook decay; 0 = codebook trained by gradients (codebook + commitment loss)
    channels: list[int] = field(default_factory=lambda: [128, 128, 128, 256, 256, 512])
    # ema: the EMA codebook (decay > 0) or gradient-trained VQ (decay 0); optvq: the OptVQ quantizer of model_type
    # vqvaeoptvq (Sinkhorn assignment in training, l2 loss, codebook proj(embedding)); decay and commitment_cost
    # then have no effect
    quantizer: Literal["ema", "optvq"] = "ema"
    optvq_beta: float = 1.0  # optvq: weight of the codebook term mse(E_k, sg[x]) (the user's optvq_beta)
    optvq_use_proj: bool = True  # optvq: codebook = proj(embedding.weight) (the user's optvq_use_proj)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 2)

    @property
    def in_channels(self) -> int:
        return self.input_channels

    def check(self, path: str) -> None:
        p = path or "dalle_vqvae"
        require(self.input_channels >= 1, f"{p}.input_channels", "must be >= 1", "use 3 for RGB")
        require(self.n_init >= 1, f"{p}.n_init", f"must be >= 1, got {self.n_init}", "use e.g. 128")
        require(self.vocab_size >= 2, f"{p}.vocab_size", f"must be >= 2, got {self.vocab_size}", "use e.g. 8192")
        require(self.commitment_cost >= 0, f"{p}.commitment_cost", "must be >= 0", "use e.g. 0.25")
        require(0.0 <= self.decay < 1.0, f"{p}.decay", f"must be in [0, 1), got {self.decay}",
                "use e.g. 0.99 (EMA codebook) or 0 (gradient-trained codebook)")
        require(len(self.channels) >= 2, f"{p}.channels", f"needs at least 2 widths, got {self.channels}",
                "use e.g. [128, 128, 128, 256, 256, 512]")
        bad = [c for c in self.channels if c <= 0 or c % 32]
        require(not bad, f"{p}.channels", f"widths {bad} are not positive multiples of 32 (the GroupNorm group count)",
                "use widths such as 64, 128, 256")
        require(self.optvq_beta >= 0, f"{p}.optvq_beta", f"must be >= 0, got {self.optvq_beta}", "use e.g. 1.0")


@dataclass
class ModelConfig:
    family: Family = "taming"  # taming (VQGAN family) or vqvae2; seed model_type aliases map here
    variant: Variant | None = "VQModel"  # taming family only
    n_embed: int = 1024  # codebook size K (taming family)
    embed_dim: int = 256  # code dimension (taming family)
    ddconfig: DDConfig = field(default_factory=DDConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    vqvae2: VQVAE2Config = field(default_factory=VQVAE2Config)
    vqvae2_optvq: VQVAE2OptVQConfig = field(default_factory=VQVAE2OptVQConfig)
    dalle_vqvae: DalleVQVAEConfig = field(default_factory=DalleVQVAEConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    init_from: str | None = None  # weights to start from: an exported dir, a vqforge checkpoint or a taming .ckpt

    @property
    def arch(self) -> VQVAE2Config:
        """The architecture section of a hierarchical family (model.vqvae2 or model.vqvae2_optvq)."""
        return self.vqvae2_optvq if self.family == "vqvae2_optvq" else self.vqvae2

    @property
    def network(self) -> "DDConfig | VQVAE2Config | DalleVQVAEConfig | PatchConfig":
        """The section that configures this family's encoder and decoder."""
        if self.family in HIERARCHICAL_FAMILIES:
            return self.arch
        return {"dalle_vqvae": self.dalle_vqvae, "patch": self.patch}.get(self.family, self.ddconfig)

    @property
    def downsample_factor(self) -> int:
        """What input height and width must be divisible by: input pixels per token along each side (for the
        hierarchical families, per token of the coarsest level)."""
        return self.network.downsample_factor

    @property
    def in_channels(self) -> int:
        """Channels of the model's input images."""
        return self.network.in_channels

    def check_resolution(self, size: int, field: str) -> None:
        """ConfigError at `field` unless images of size x size can be encoded (divisible by `downsample_factor`)."""
        f = self.downsample_factor
        what = ("the product of scaling_rates" if self.family in HIERARCHICAL_FAMILIES
                else "the model's downsampling factor")
        require(size % f == 0, field, f"{size} is not divisible by {what} ({f})",
                f"use a multiple of {f}, e.g. {max(f, size - size % f)}")

    def check(self, path: str) -> None:
        p = path or "model"
        require(self.n_embed >= 2, f"{p}.n_embed", f"must be >= 2, got {self.n_embed}", "use a codebook size such as 1024")
        require(self.embed_dim >= 1, f"{p}.embed_dim", f"must be >= 1, got {self.embed_dim}", "use e.g. 256")
        allowed = VARIANTS_BY_FAMILY[self.family]
        if not allowed and self.variant is not None:
            raise ConfigError(
                f"{p}.variant",
                f"{self.variant!r} is a taming-family variant, but the model family is {self.family!r}",
                "for a taming VQGAN set model_type to 'TamingVQGAN' (native: model.family: taming); "
                "for VQ-VAE-2 remove model_variant",
            )
        if self.family == "patch":
            self.patch.check(f"{p}.patch")
        if allowed:
            require(self.variant in allowed, f"{p}.variant", f"{self.variant!r} is not a taming variant",
                    f"use one of {list(allowed)}")
            q = self.quantizer
            if q.rvq_levels > 1 and q.rvq_loss == "prefix":
                require(self.variant == "EMAVQ" and q.shared_codebook, f"{p}.quantizer.rvq_loss",
                        "the prefix loss is the shared-EMA-codebook residual quantizer's (variant EMAVQ, "
                        "shared_codebook: true)", "set variant: EMAVQ and quantizer.shared_codebook: true, "
                        "or rvq_loss: per_level")
            if self.variant == "PQEMAVQ":
                require(self.embed_dim % q.num_subspaces == 0, f"{p}.quantizer.num_subspaces",
                        f"embed_dim {self.embed_dim} is not divisible into {q.num_subspaces} subspaces",
                        "choose num_subspaces dividing embed_dim (e.g. 4, 8, 64 for 256)")
        n_codes = self.vqvae2.nb_entries if self.family == "vqvae2" else self.n_embed
        resolve_quantizer(self.family, self.variant, self.quantizer, n_codes, p)

    def quantizer_choice(self) -> QuantizerChoice:
        """The quantizer this config builds (model.quantizer.type, or what the variant implies)."""
        n_codes = self.vqvae2.nb_entries if self.family == "vqvae2" else self.n_embed
        return resolve_quantizer(self.family, self.variant, self.quantizer, n_codes)


@dataclass
class LossConfig:
    pixel_loss: Literal["l1", "l2"] = "l1"
    pixelloss_weight: float = 1.0  # applied (taming stores it but ignores it)
    perceptual_weight: float = 1.0  # LPIPS-VGG; needs VGG16 ImageNet weights (see vgg_path)
    vgg_path: str | None = None  # vgg16-397923af.pth; else $VQFORGE_VGG16 or the torch hub cache
    codebook_weight: float = 1.0
    use_gan: bool = False  # false: no discriminator is built at all
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_start: int = 0  # generator step from which the adversarial term has weight disc_factor
    disc_factor: float = 1.0
    disc_weight: float = 1.0  # multiplies the adaptive weight
    disc_num_layers: int = 3
    disc_ndf: int = 64
    disc_in_channels: int = 3
    disc_norm: Literal["batch", "act"] = "batch"  # BatchNorm or ActNorm (taming's use_actnorm)

    def check(self, path: str) -> None:
        p = path or "loss"
        for name in ("pixelloss_weight", "perceptual_weight", "codebook_weight", "disc_factor", "disc_weight"):
            require(getattr(self, name) >= 0, f"{p}.{name}", f"must be >= 0, got {getattr(self, name)}", "use 0 to turn the term off")
        require(self.disc_start >= 0, f"{p}.disc_start", "must be >= 0", "use 0 to start at once")
        require(self.disc_num_layers >= 1, f"{p}.disc_num_layers", "must be >= 1", "use e.g. 3")
        require(self.disc_ndf >= 1, f"{p}.disc_ndf", "must be >= 1", "use e.g. 64")
        require(self.disc_in_channels >= 1, f"{p}.disc_in_channels", "must be >= 1", "use 3 for RGB")


@dataclass
class DataConfig:
    source: Literal["files", "sample_photos"] = "files"  # sample_photos: scikit-image's bundled photos
    # source sample_photos: the training photos by name (a subset of the 10 training photos); null = all of them
    sample_photos: list[str] | None = None
    # source sample_photos: validation cuts each held-out photo into n x n tiles, one validation image each (then
    # resized and centre-cropped like any image): 2 gives 8 images; 4 with half the `resize` gives 32 at the same scale
    sample_val_tiles: int = 2
    train: list[str] = field(default_factory=list)  # files, directories (recursive) or glob patterns
    val: list[str] = field(default_factory=list)
    use_images: bool = False  # group random images into pseudo-videos of sequence_length frames
    sequence_length: int = 1  # frames per sample (D); images: 1
    frame_stride: int = 1
    resolution: int = 256  # crop size
    resize: int | None = None  # shorter side before cropping; null = resolution
    resize_range: list[int] | None = None  # [lo, hi]: multi-scale training crops, shorter side drawn log-uniformly
    random_crop: bool = True  # training crops (validation always center-crops)
    hflip: bool = False  # random horizontal flip for training
    batch_size: int = 4  # per process
    val_batch_size: int | None = None  # null = batch_size
    num_workers: int = 0
    shuffle: bool = True
    max_val_samples: int | None = None
    # use only the shard_id-th of num_shards contiguous slices of each file list (train and val; the last slice takes
    # the remainder), as the previous system's data_args.shard_id / num_shards did; independent of torchrun ranks
    num_shards: int = 1
    shard_id: int = 0

    def check(self, path: str) -> None:
        p = path or "data"
        require(self.sequence_length >= 1, f"{p}.sequence_length", "must be >= 1", "use 1 for single images")
        require(self.frame_stride >= 1, f"{p}.frame_stride", "must be >= 1", "use 1 for consecutive frames")
        require(self.resolution >= 8, f"{p}.resolution", f"must be >= 8, got {self.resolution}", "use e.g. 256")
        require(self.resize is None or self.resize >= self.resolution, f"{p}.resize",
                f"{self.resize} is smaller than the crop size {self.resolution}", "use resize >= resolution or null")
        if self.resize_range is not None:
            rr = self.resize_range
            require(isinstance(rr, (list, tuple)) and len(rr) == 2 and all(isinstance(v, int) for v in rr),
                    f"{p}.resize_range", f"must be two integers [lo, hi], got {rr!r}", "use e.g. [64, 256] or null")
            require(rr[0] >= self.resolution, f"{p}.resize_range",
                    f"lo {rr[0]} is smaller than the crop size {self.resolution}", "use lo >= resolution")
            require(rr[1] >= rr[0], f"{p}.resize_range", f"hi {rr[1]} is smaller than lo {rr[0]}", "use [lo, hi] with lo <= hi")
        if self.sample_photos is not None:
            from ..data.samples import SAMPLE_PHOTOS_TRAIN, SAMPLE_PHOTOS_VAL

            names = self.sample_photos
            held_out = [n for n in names if n in SAMPLE_PHOTOS_VAL]
            require(not held_out, f"{p}.sample_photos", f"{held_out} are the held-out validation photos",
                    f"train on photos among {list(SAMPLE_PHOTOS_TRAIN)}")
            unknown = [n for n in names if n not in SAMPLE_PHOTOS_TRAIN]
            require(bool(names) and not unknown, f"{p}.sample_photos",
                    f"unknown photos {unknown}" if unknown else "is empty",
                    f"list photos among {list(SAMPLE_PHOTOS_TRAIN)}, or null for all of them")
            require(len(set(names)) == len(names), f"{p}.sample_photos", f"names a photo twice: {names}",
                    "list each photo once")
        require(self.sample_val_tiles >= 1, f"{p}.sample_val_tiles", f"must be >= 1, got {self.sample_val_tiles}",
                "use e.g. 2 (2 x 2 tiles of each held-out photo)")
        require(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1", "use e.g. 4")
        require(self.val_batch_size is None or self.val_batch_size >= 1, f"{p}.val_batch_size", "must be >= 1", "use null")
        require(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0", "use 0 to load in the main process")
        require(self.max_val_samples is None or self.max_val_samples >= 1, f"{p}.max_val_samples", "must be >= 1", "use null for all")
        require(self.num_shards >= 1, f"{p}.num_shards", f"must be >= 1, got {self.num_shards}", "use 1 for all files")
        require(0 <= self.shard_id < self.num_shards, f"{p}.shard_id",
                f"must be in [0, num_shards) = [0, {self.num_shards}), got {self.shard_id}",
                f"use a shard_id from 0 to {self.num_shards - 1}")

    def check_training_data(self, path: str = "data") -> None:
        """Training needs data; evaluation, export and conversion of a config do not, so this is not in `check`."""
        require(self.source != "files" or bool(self.train), f"{path}.train", "no training data given",
                "list image/video files, directories or globs, or set data.source: sample_photos")


@dataclass
class TrainConfig:
    num_steps: int = 1000  # generator (optimizer) steps
    lr: float = 1.0e-4
    base_learning_rate: float | None = None  # taming rule: lr = base × batch × world size × grad_accum_steps
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "exponential", "cosine"] = "constant"
    lr_decay: float = 1.0  # exponential: lr × lr_decay every lr_decay_every steps
    lr_decay_every: int = 1000
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr (every schedule)
    min_lr: float = 0.0  # cosine floor
    disc_lr: float | None = None  # null = lr
    # same: the discriminator's lr follows lr_schedule too; constant: it stays at disc_lr (the seed format's lr_decay
    # touched the main optimizer only)
    disc_lr_schedule: Literal["same", "constant"] = "same"
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    disc_update_every: int = 1  # discriminator step every N generator steps (seed format default 3)
    disc_warmup_steps: int = 0  # discriminator starts at disc_start - disc_warmup_steps
    grad_accum_steps: int = 1
    grad_clip: float | None = None  # max grad norm; null = off
    # auto = bf16 autocast on CUDA (quantizer distances, LPIPS and losses stay float32), fp32 elsewhere
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # torch.compile (inductor) of the tokenizer's forward; eager with a warning where unavailable
    channels_last: bool | None = None  # NHWC memory format for model, discriminator, LPIPS, inputs; null = on for CPU, off for CUDA
    fused_optimizer: bool | None = None  # fused Adam/AdamW kernels; null = on where torch has them for the device
    ema_decay: float | None = None  # weight EMA of the tokenizer; null = off
    max_bad_steps: int = 10  # consecutive non-finite steps before training stops
    save_interval: int = 1000
    keep_last: int = 3
    validation_interval: int = 500
    val_max_batches: int | None = None
    best_metric: Literal["psnr", "rec_loss", "ssim", "lpips", "rfid"] = "psnr"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str | None = None  # run directory; the CLI's --out wins
    # resume from this checkpoint (a vqforge run/checkpoint directory, or a checkpoint file of the user's previous
    # system: .pth.tar / .pt); the CLI's --resume wins; null = start from scratch
    resume_from: str | None = None
    dist_timeout_s: int = 600

    def check(self, path: str) -> None:
        p = path or "train"
        require(self.num_steps >= 1, f"{p}.num_steps", "must be >= 1", "use e.g. 1000")
        require(self.lr > 0, f"{p}.lr", f"must be > 0, got {self.lr}", "use e.g. 1e-4")
        require(self.base_learning_rate is None or self.base_learning_rate > 0, f"{p}.base_learning_rate", "must be > 0", "use e.g. 4.5e-6")
        for name in ("betas", "disc_betas"):
            b = getattr(self, name)
            require(len(b) == 2 and all(0 <= x < 1 for x in b), f"{p}.{name}", f"must be two numbers in [0, 1), got {b}",
                    "use e.g. [0.5, 0.9]")
        require(self.weight_decay >= 0, f"{p}.weight_decay", "must be >= 0", "use 0")
        require(0 < self.lr_decay <= 1, f"{p}.lr_decay", f"must be in (0, 1], got {self.lr_decay}", "use e.g. 0.99, or 1 for none")
        require(self.lr_decay_every >= 1, f"{p}.lr_decay_every", "must be >= 1", "use e.g. 1000")
        require(self.warmup_steps >= 0, f"{p}.warmup_steps", "must be >= 0", "use 0")
        require(self.min_lr >= 0, f"{p}.min_lr", "must be >= 0", "use 0")
        require(self.disc_lr is None or self.disc_lr > 0, f"{p}.disc_lr", "must be > 0", "use null to follow lr")
        require(self.disc_update_every >= 1, f"{p}.disc_update_every", "must be >= 1", "use 1 to step every time")
        require(self.disc_warmup_steps >= 0, f"{p}.disc_warmup_steps", "must be >= 0", "use 0")
        require(self.grad_accum_steps >= 1, f"{p}.grad_accum_steps", "must be >= 1", "use 1")
        require(self.grad_clip is None or self.grad_clip > 0, f"{p}.grad_clip", "must be > 0", "use null to disable")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, f"{p}.ema_decay", "must be in (0, 1)", "use e.g. 0.999 or null")
        require(self.max_bad_steps >= 1, f"{p}.max_bad_steps", "must be >= 1", "use e.g. 10")
        require(self.save_interval >= 1, f"{p}.save_interval", "must be >= 1", "use e.g. 1000")
        require(self.keep_last >= 1, f"{p}.keep_last", "must be >= 1", "use e.g. 3")
        require(self.validation_interval >= 1, f"{p}.validation_interval", "must be >= 1", "use e.g. 500")
        require(self.val_max_batches is None or self.val_max_batches >= 1, f"{p}.val_max_batches", "must be >= 1", "use null")
        dev_ok = self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        require(dev_ok, f"{p}.device", f"{self.device!r} is not a device", "use auto, cpu, cuda or cuda:N")
        require(self.dist_timeout_s >= 1, f"{p}.dist_timeout_s", "must be >= 1", "use e.g. 600")


@dataclass
class LogConfig:
    every: int = 10  # steps between log lines / scalars
    image_every: int | None = None  # reconstruction grids; null = at each validation
    tensorboard: bool = True
    wandb: bool = False  # needs `pip install wandb`
    project: str = "vqforge"  # wandb project
    progress: bool = True  # progress bar

    def check(self, path: str) -> None:
        p = path or "log"
        require(self.every >= 1, f"{p}.every", "must be >= 1", "use e.g. 10")
        require(self.image_every is None or self.image_every >= 1, f"{p}.image_every", "must be >= 1", "use null")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # dotted paths the user (or a reader on the user's behalf) set explicitly; not part of the config itself
    _explicit: set[str] = field(default_factory=set, repr=False, compare=False)
    _format: str = field(default="native", repr=False, compare=False)

    def check(self, path: str = "") -> None:
        self.model.check_resolution(self.data.resolution, "data.resolution")
        out_ch = {"taming": self.model.ddconfig.out_ch, "dalle_vqvae": self.model.dalle_vqvae.input_channels,
                  "patch": self.model.patch.out_channels}.get(
            self.model.family, self.model.arch.in_channels if self.model.family in HIERARCHICAL_FAMILIES else 3)
        require(self.loss.disc_in_channels == out_ch or not self.loss.use_gan, "loss.disc_in_channels",
                f"is {self.loss.disc_in_channels} but the model outputs {out_ch} channels",
                "set loss.disc_in_channels to the model's output channels")
        require(self.model.family in ("taming", "patch") or self.model.quantizer.rvq_levels == 1,
                "model.quantizer.rvq_levels",
                "residual quantization is a taming- and patch-family option; VQ-VAE-2 has one codebook per level",
                "remove rvq_levels, or use model.family: taming or patch")
