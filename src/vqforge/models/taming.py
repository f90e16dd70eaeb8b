"""The taming-transformers VQGAN family: VQModel, EMAVQ and GumbelVQ (+ residual VQ), as one module.

The module tree and state-dict keys are taming-transformers' (`encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*`, `quantize.embedding.weight`; EMAVQ adds `quantize.embedding.cluster_size/embed_avg`; GumbelVQ
has `quantize.proj.*` and `quantize.embed.weight`), so the weights of its checkpoints load with strict key checking.
The variant only chooses the quantizer (`vqforge.quantizers.build_quantizer`), or `model.quantizer.type` does (fsq,
simvq, lfq, ...); encoder and decoder are shared.

Data flow, image side R x R, f = 2^(len(ch_mult)-1):

    x (B, in_channels, R, R) -> encoder -> (B, z_channels, R/f, R/f) -> quant_conv -> h -> quantize -> quant
    quant (B, embed_dim, R/f, R/f) -> post_quant_conv -> (B, z_channels, ...) -> decoder -> (B, out_ch, R, R)
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import FAMILY_ALIASES, VARIANTS_BY_FAMILY, ModelConfig
from ..errors import ConfigError
from ..quantizers import Quantizer, build_quantizer
from ..quantizers.base import check_index_range
from .output import TokenizerOutput
from .registry import register_model
from .taming_modules import Decoder, Encoder


def check_taming_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for settings this architecture cannot build (checked here too: configs built in code
    skip the schema's own validation)."""
    variants = VARIANTS_BY_FAMILY["taming"]
    if cfg.variant not in variants:
        raise ConfigError("model.variant", f"{cfg.variant!r} is not a taming-family variant", f"use one of {list(variants)}")
    dd = cfg.ddconfig
    dd.check("model.ddconfig")
    cfg.quantizer_choice()  # model.quantizer.type and rvq_levels against the variant


class TamingVQGAN(nn.Module):
    """VQGAN tokenizer: images in [-1, 1] -> code indices -> images.

    Variants: "VQModel" (codebook learned by gradients), "EMAVQ" (codebook learned by exponential moving averages;
    its tensors have requires_grad=False), "GumbelVQ" (Gumbel-softmax over a 1x1 projection to n_embed logits),
    "PQEMAVQ" (product quantization: quantizer.num_subspaces EMA codebooks, indices (B, S, h, w)).
    With `quantizer.rvq_levels > 1`, VQModel/EMAVQ quantize residually and indices have a depth axis.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_taming_config(cfg)
        self.config = cfg
        dd = cfg.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(dd)
        z_in = self.encoder.out_channels  # 2 * z_channels when double_z, else z_channels
        if cfg.quantizer_choice().type == "gumbel":
            # the quantizer's own 1x1 `proj` maps z_channels to n_embed logits; taming-transformers' GumbelVQ
            # checkpoints have embed_dim == z_channels, so this conv has their quant_conv's shape
            self.quant_conv = nn.Conv2d(z_in, dd.z_channels, kernel_size=1)
            q_in = dd.z_channels
        else:
            self.quant_conv = nn.Conv2d(z_in, cfg.embed_dim, kernel_size=1)
            q_in = cfg.embed_dim
        self.quantize: Quantizer = build_quantizer(cfg.variant, cfg.quantizer, cfg.n_embed, cfg.embed_dim, q_in)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd.z_channels, kernel_size=1)

    # --- properties used by trainer, evaluation and export -------------------------------------------------------
    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's final conv weight: the adaptive GAN weight compares gradients on it."""
        return self.decoder.conv_out.weight

    @property
    def num_codes(self) -> int:
        """Codebook size K (per residual level)."""
        return self.quantize.num_codes

    @property
    def depth(self) -> int:
        """Number of residual levels D (1 for plain quantizers)."""
        return self.quantize.depth

    @property
    def index_levels(self) -> int:
        """Index maps per position: residual depth D, or S for a product quantizer (indices (B, S, h, w))."""
        return getattr(self.quantize, "num_subspaces", self.quantize.depth)

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side."""
        return self.config.ddconfig.downsample_factor

    def set_step(self, step: int) -> None:
        """Tell the quantizer the global step (Gumbel temperature schedule, random-depth draws)."""
        self.quantize.set_step(step)

    # --- the pieces -----------------------------------------------------------------------------------------------
    def encode_to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, R, R) -> pre-quantization latent h = quant_conv(encoder(x)), (B, C_h, R/f, R/f)."""
        return self.quant_conv(self.encoder(x))

    def decode_latent(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantized latent (B, embed_dim, h, w) -> images (B, out_ch, R, R)."""
        return self.decoder(self.post_quant_conv(quant))

    # --- tokenizer API --------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        q = self.quantize(self.encode_to_latent(x))
        return TokenizerOutput(
            reconstruction=self.decode_latent(q.quantized),
            indices=q.indices,
            codebook_loss=q.loss,
            stats=q.stats,
        )

    def encode(self, x: torch.Tensor, return_dict: bool | None = None
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, tuple] | dict[str, object]:
        """Images (B, C, R, R) in [-1, 1] -> indices (B, h, w), or (B, D, h, w) for residual quantizers.

        taming's form: `return_dict=False` gives taming's tuple `(quant, emb_loss, info)`, quant (B, embed_dim, h, w),
        emb_loss the quantizer loss, info = (perplexity, None, indices) with indices flattened to (B·h·w,) for
        one-level VQ/EMA quantizers (taming's default layout), (B, h, w) for Gumbel (as taming's GumbelQuantize), and
        (B, L, h, w) for multi-level ones. `return_dict=True` gives the same as a dict {"quant", "emb_loss",
        "indices" (the map), "stats"}.

        Call in eval mode: in training mode an EMA codebook would update and Gumbel sampling would be random.
        """
        q = self.quantize(self.encode_to_latent(x))
        if return_dict is None:
            return q.indices
        if return_dict:
            return {"quant": q.quantized, "emb_loss": q.loss, "indices": q.indices, "stats": q.stats}
        flat = q.indices.dim() == 3 and self.config.quantizer_choice().type in ("vq", "ema")
        info = (q.stats.get("perplexity"), None, q.indices.reshape(-1) if flat else q.indices)
        return q.quantized, q.loss, info

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w), or (B, D', h, w) with D' <= depth (the first D' residual levels) -> images."""
        check_index_range(indices, self.quantize.num_codes)  # every level shares K; also covers residual levels
        return self.decode_latent(self.quantize.codes_from_indices(indices))

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """taming's name for decoding code indices (B, h, w) to images; the same as `decode`."""
        return self.decode(code_b)


@register_model("taming", aliases=("TamingVQGAN", "taming_vqgan", "VQGAN", "vqgan", "EMAVQ", "emavq"))
def build_taming(cfg: ModelConfig) -> TamingVQGAN:
    """Build a taming-family VQGAN from `cfg` (variant, n_embed, embed_dim, ddconfig, quantizer)."""
    if FAMILY_ALIASES.get(cfg.family, cfg.family) != "taming":
        raise ConfigError("model.family", f"{cfg.family!r} is not the taming family", "use family: taming")
    return TamingVQGAN(cfg)
