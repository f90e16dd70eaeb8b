"""Hierarchical VQ-VAE-2 (Razavi et al. 2019) with any number of levels.

Level 0 is the finest (largest) latent map, level `nb_levels - 1` the coarsest. Data flow for `nb_levels = 3`:

    x -> encoders[0] -> e0 -> encoders[1] -> e1 -> encoders[2] -> e2          (each down by scaling_rates[l])
    top-down:  q2 = codebooks[2](e2);                     d2 = decoders[2](q2)             (d2 at level 1's size)
               q1 = codebooks[1](cat(e1, d2));            d1 = decoders[1](cat(q1, up(q2)))  (d1 at level 0's size)
               q0 = codebooks[0](cat(e0, d1));            x' = decoders[0](cat(q0, up(q1), up(up(q2))))

so every lower level's code is conditioned on the decoding of the levels above, and every decoder sees its own code
plus the codes of all coarser levels brought to its resolution by the `upscalers`.

Module tree and state-dict key names are those of the `VQVAE` class in `vqvae.py` of the public `vvvm23/vqvae-2`
repository (the version with `upscalers`; constructor arguments `in_channels, hidden_channels, res_channels,
nb_res_layers, nb_levels, embed_dim, nb_entries, scaling_rates`), so the user's existing checkpoints load with strict
key checking: `encoders.{l}`, `codebooks.{l}.conv_in`, `decoders.{l}`, `upscalers.{j}` map one to one, and that
repository's codebook buffers `codebooks.{l}.embed` (D, K), `embed_avg` (D, K), `cluster_size` (K) are converted on
load to the EMA quantizer's layout (see `CodeLayer._load_from_state_dict`). The public API lists levels coarsest first
(`encode` returns `[top, ..., bottom]`), while module indices count from the finest level as in that repository.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.schema import ModelConfig, QuantizerConfig, resolve_quantizer
from ..quantizers import build_quantizer_of_type
from ..quantizers.base import QuantizerOutput
from ..quantizers.ema import EMAVectorQuantizer
from ..quantizers.maintenance import MaintenanceConfig
from .output import TokenizerOutput
from .registry import register_model


def _halvings(rate: int) -> int:
    """Number of stride-2 steps for a power-of-two scaling rate (validated by VQVAE2Config.check)."""
    steps = int(math.log2(rate))
    if 2**steps != rate or steps < 1:
        raise ValueError(f"scaling rate {rate} is not a power of two >= 2; use rates such as 2, 4 or 8")
    return steps


class ResidualBlock(nn.Module):
    """ReZero residual block: x + alpha * (conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU)(x), alpha starts at 0.

    `layers` indices (0 conv, 1 BN, 3 conv, 4 BN) and `alpha` match the reference checkpoints.
    """

    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, res_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(res_channels),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        # ReZero: every block starts as the identity, so a deep stack trains from step 0
        self.alpha = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.layers(x)


class ResidualStack(nn.Module):
    def __init__(self, channels: int, res_channels: int, nb_layers: int):
        super().__init__()
        self.stack = nn.Sequential(*[ResidualBlock(channels, res_channels) for _ in range(nb_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x)


class Encoder(nn.Module):
    """Down by `rate`: log2(rate) × (conv4x4 stride 2 -> BN -> ReLU), conv3x3 -> BN, residual stack.

    The first strided conv goes to hidden/2 channels, the following ones to hidden (as in the reference model).
    """

    def __init__(self, in_channels: int, hidden_channels: int, res_channels: int, nb_res_layers: int, rate: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out = in_channels, hidden_channels // 2
        for _ in range(_halvings(rate)):
            layers.append(nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()))
            c_in, c_out = c_out, hidden_channels
        layers += [
            nn.Conv2d(c_in, hidden_channels, 3, padding=1),
            nn.BatchNorm2d(hidden_channels),
            ResidualStack(hidden_channels, res_channels, nb_res_layers),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, hidden, H / rate, W / rate)


class Decoder(nn.Module):
    """Up by `rate`: conv3x3 -> residual stack -> log2(rate) × (convT4x4 stride 2 -> BN -> ReLU) -> conv3x3 -> BN.

    The first transposed conv goes to hidden/2 channels, any further ones to `out_channels` (as in the reference
    model, whose checkpoints this must load).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, res_channels: int,
                 nb_res_layers: int, rate: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            ResidualStack(hidden_channels, res_channels, nb_res_layers),
        ]
        c_in, c_out = hidden_channels, hidden_channels // 2
        for _ in range(_halvings(rate)):
            layers.append(nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()))
            c_in, c_out = c_out, out_channels
        layers += [nn.Conv2d(c_in, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels)]
        self.layers = nn.Sequential(*layers)

    @property
    def out_conv(self) -> nn.Conv2d:
        return self.layers[-2]  # the last conv (before the output BatchNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Upscaler(nn.Module):
    """Brings one level's code down the hierarchy: stage s is log2(rate_s) × (convT4x4 stride 2 -> BN -> ReLU)."""

    def __init__(self, embed_dim: int, rates: list[int]):
        super().__init__()
        self.stages = nn.ModuleList()
        for rate in rates:
            layers: list[nn.Module] = []
            for _ in range(_halvings(rate)):
                layers += [nn.ConvTranspose2d(embed_dim, embed_dim, 4, stride=2, padding=1), nn.BatchNorm2d(embed_dim), nn.ReLU()]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        return self.stages[stage](x)


# reference codebook buffer -> key inside EMAVectorQuantizer; `embed` and `embed_avg` are stored (D, K) there, (K, D) here
_QUANTIZER_KEY_FOR = {"embed": "embedding.weight", "embed_avg": "embedding.embed_avg", "cluster_size": "embedding.cluster_size"}


class CodeLayer(nn.Module):
    """1x1 conv to embed_dim followed by one quantizer: an EMA codebook (nb_entries × embed_dim) by default, or the
    single-map quantizer model.quantizer.type names (vq, gumbel, fsq, simvq, lfq)."""

    def __init__(self, in_channels: int, embed_dim: int, nb_entries: int, quantizer: QuantizerConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, embed_dim, 1)
        choice = resolve_quantizer("vqvae2", None, quantizer, nb_entries)
        if choice.type == "ema":
            self.quantizer = EMAVectorQuantizer(nb_entries, embed_dim, beta=quantizer.beta, decay=quantizer.decay,
                                                eps=quantizer.eps, maintenance=MaintenanceConfig.from_config(quantizer),
                                                codebook_dim=quantizer.codebook_dim, cosine=quantizer.use_cosine_sim)
        else:
            self.quantizer = build_quantizer_of_type(choice, quantizer, nb_entries, embed_dim, embed_dim)

    def forward(self, h: torch.Tensor) -> QuantizerOutput:
        # the codebook runs in fp32 even under bf16 autocast: EMA averages and squared distances lose too much in bf16
        with torch.autocast(device_type=h.device.type, enabled=False):
            z = self.conv_in(h.float())  # (B, embed_dim, h, w)
            return self.quantizer(z)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints of the reference VQ-VAE-2 keep the codebook as buffers `embed` (D, K), `embed_avg` (D, K) and
        # `cluster_size` (K) on this module; rename them to the quantizer's keys (and (K, D) layout) so they load.
        # load_state_dict hands every module its own copy of the dict, so editing it here is safe.
        if all(prefix + old in state_dict for old in _QUANTIZER_KEY_FOR):
            for old, new in _QUANTIZER_KEY_FOR.items():
                tensor = state_dict.pop(prefix + old)
                state_dict[prefix + "quantizer." + new] = tensor if old == "cluster_size" else tensor.t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class VQVAE2(nn.Module):
    """Hierarchical VQ-VAE-2 tokenizer; see the module docstring for the data flow."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.arch  # model.vqvae2 (or model.vqvae2_optvq for the optimal-transport family)
        # a bad architecture would otherwise fail deep inside a conv constructor (models can be built from a
        # ModelConfig that never went through Config.check)
        c.check(f"model.{config.family}")
        self.nb_levels = c.nb_levels
        self.scaling_rates = list(c.scaling_rates)
        self.nb_entries = c.nb_entries
        self.embed_dim = c.embed_dim
        n, hid, d = c.nb_levels, c.hidden_channels, c.embed_dim

        # encoders[l] takes level l-1's features (the image for l = 0) down by scaling_rates[l]
        self.encoders = nn.ModuleList(
            Encoder(c.in_channels if lvl == 0 else hid, hid, c.res_channels, c.nb_res_layers, rate)
            for lvl, rate in enumerate(self.scaling_rates)
        )
        # codebooks[l] sees its encoder features, concatenated (below the top) with the decoding of level l+1
        self.codebooks = nn.ModuleList(
            self._code_layer(hid + (d if lvl < n - 1 else 0), d, c.nb_entries) for lvl in range(n)
        )
        self.nb_entries = self.codebooks[0].quantizer.num_codes  # K: nb_entries, or the FSQ grid size
        # decoders[l] takes level l's code plus the codes of the n-1-l coarser levels, up by scaling_rates[l],
        # to embed_dim channels (conditioning for level l-1) or, for l = 0, to the image
        self.decoders = nn.ModuleList(
            Decoder(d * (n - lvl), hid, c.in_channels if lvl == 0 else d, c.res_channels, c.nb_res_layers, rate)
            for lvl, rate in enumerate(self.scaling_rates)
        )
        # upscalers[j] moves the code of the j-th level from the top (level n-1-j) down one level per stage:
        # stage s goes from level n-1-j-s to n-2-j-s, by scaling_rates[n-1-j-s]; the finest level needs none
        self.upscalers = nn.ModuleList(
            Upscaler(d, self.scaling_rates[1 : n - j][::-1]) for j in range(n - 1)
        )

    def _code_layer(self, in_channels: int, embed_dim: int, nb_entries: int) -> nn.Module:
        """One level's 1x1 conv + quantizer (`conv_in`, `quantizer`); the OptVQ family swaps the quantizer."""
        return CodeLayer(in_channels, embed_dim, nb_entries, self.config.quantizer)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The user's VQ-VAE-2 classes also register encoders[0], decoders[0] and the codebook list under the names
        # `encoder`, `decoder` and `vq_vae`, so their checkpoints hold every such tensor twice. Accept those copies
        # only when they equal the canonical tensor; anything else stays and fails strict loading.
        for alias, canonical in (("encoder.", "encoders.0."), ("decoder.", "decoders.0."), ("vq_vae.", "codebooks.")):
            for key in [k for k in state_dict if k.startswith(prefix + alias)]:
                twin = prefix + canonical + key[len(prefix + alias):]
                if twin in state_dict and torch.equal(state_dict[twin], state_dict[key]):
                    del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ---- public API -------------------------------------------------------------------------------------------

    @property
    def total_downsample(self) -> int:
        return self.config.arch.total_downsample

    def index_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each index map for an input of height × width, coarsest first."""
        shapes, h, w = [], height, width
        for rate in self.scaling_rates:
            h, w = h // rate, w // rate
            shapes.append((h, w))
        return shapes[::-1]

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the image decoder's last conv (for the adaptive GAN weight)."""
        return self.decoders[0].out_conv.weight

    def set_step(self, step: int) -> None:
        for cb in self.codebooks:
            cb.quantizer.set_step(step)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        """x (N, C, H, W) in [-1, 1] -> reconstruction, per-level indices (coarsest first), summed codebook loss."""
        recon, outs = self._run(x, decode_image=True)
        stats = self._stats(outs)
        loss = torch.stack([o.loss for o in outs]).sum()
        return TokenizerOutput(reconstruction=recon, indices=[o.indices for o in outs], codebook_loss=loss, stats=stats)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (N, C, H, W) -> index maps [(N, h_top, w_top), ..., (N, h_0, w_0)], coarsest first.

        Lower levels are conditioned on the decoding of the levels above, so this runs every decoder except the
        image decoder. In training mode it updates the EMA codebooks and BatchNorm statistics like `forward`;
        call `model.eval()` first to tokenize.
        """
        _, outs = self._run(x, decode_image=False)
        return [o.indices for o in outs]

    def decode(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Index maps, coarsest first (as `encode` returns them) -> images (N, C, H, W)."""
        self._check_indices(indices)
        codes = [self.codebooks[self.nb_levels - 1 - k].quantizer.codes_from_indices(idx) for k, idx in enumerate(indices)]
        return self._decode_codes(codes)

    # ---- internals --------------------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, decode_image: bool) -> tuple[torch.Tensor | None, list[QuantizerOutput]]:
        """Encode bottom-up, then quantize and decode top-down. Returns (reconstruction or None, outputs coarsest first)."""
        self._check_input(x)
        feats: list[torch.Tensor] = []  # feats[l]: (N, hidden, H / prod(rates[:l+1]), ...)
        h = x
        for enc in self.encoders:
            h = enc(h)
            feats.append(h)

        outs: list[QuantizerOutput] = []
        codes_up: list[torch.Tensor] = []  # codes of the levels processed so far, at the current level's resolution
        cond: torch.Tensor | None = None  # decoding of the level above, at the current level's resolution
        recon: torch.Tensor | None = None
        for k, lvl in enumerate(range(self.nb_levels - 1, -1, -1)):  # k: position from the top
            inp = feats[lvl] if cond is None else torch.cat([feats[lvl], cond], dim=1)
            out = self.codebooks[lvl](inp)
            outs.append(out)
            if lvl == 0 and not decode_image:
                break
            codes_up = [self.upscalers[j](c, k - 1 - j) for j, c in enumerate(codes_up)]
            cond = self.decoders[lvl](torch.cat([out.quantized, *codes_up], dim=1))
            codes_up.append(out.quantized)
        if decode_image:
            recon = cond  # the level-0 decoder outputs the image
        return recon, outs

    def _decode_codes(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Codes (N, embed_dim, h, w) coarsest first -> image; the top-down path of `_run` without the codebooks."""
        codes_up: list[torch.Tensor] = []
        out = codes[0]
        for k, lvl in enumerate(range(self.nb_levels - 1, -1, -1)):
            codes_up = [self.upscalers[j](c, k - 1 - j) for j, c in enumerate(codes_up)]
            out = self.decoders[lvl](torch.cat([codes[k], *codes_up], dim=1))
            codes_up.append(codes[k])
        return out  # (N, in_channels, H, W)

    def _stats(self, outs: list[QuantizerOutput]) -> dict[str, torch.Tensor]:
        """Per-level quantizer stats as "l{k}/<name>" (k = position in the indices list, 0 = coarsest) plus overall
        "usage" (mean over levels = fraction of all levels' codes used, as every level has nb_entries codes) and
        "perplexity" (mean of the per-level perplexities)."""
        stats: dict[str, torch.Tensor] = {}
        for k, out in enumerate(outs):
            for name, value in out.stats.items():
                stats[f"l{k}/{name}"] = value.detach()
        for name in ("usage", "perplexity"):
            stats[name] = torch.stack([stats[f"l{k}/{name}"] for k in range(len(outs))]).mean()
        return stats

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"VQ-VAE-2 expects images (N, C, H, W), got shape {tuple(x.shape)}")
        f = self.total_downsample
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by the product of scaling_rates "
                             f"{self.scaling_rates} = {f}; crop or resize to a multiple of {f}")

    def _check_indices(self, indices: list[torch.Tensor]) -> None:
        if not isinstance(indices, (list, tuple)) or len(indices) != self.nb_levels:
            got = len(indices) if isinstance(indices, (list, tuple)) else type(indices).__name__
            raise ValueError(f"decode expects a list of {self.nb_levels} index maps (coarsest first, as encode "
                             f"returns them), got {got}")
        for k in range(1, self.nb_levels):
            rate = self.scaling_rates[self.nb_levels - k]  # position k-1 is level n-k, which went down by this rate
            prev, cur = indices[k - 1].shape, indices[k].shape
            if cur[0] != prev[0] or cur[-2] != prev[-2] * rate or cur[-1] != prev[-1] * rate:
                raise ValueError(f"index map {k} has shape {tuple(cur)} but map {k - 1} has {tuple(prev)}: each map "
                                 f"must be {rate}x the size of the one before; pass the list that encode returned")
        for k, idx in enumerate(indices):
            if idx.dtype.is_floating_point or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.nb_entries)):
                raise ValueError(f"index map {k} must hold integers in [0, {self.nb_entries}), "
                                 f"got dtype {idx.dtype}" + (f", range [{int(idx.min())}, {int(idx.max())}]" if idx.numel() else ""))


@register_model("vqvae2", aliases=("VQVAE2",))
def build_vqvae2(config: ModelConfig) -> VQVAE2:
    """Build a VQ-VAE-2 from `config.vqvae2` (architecture) and `config.quantizer` (beta, decay, eps)."""
    return VQVAE2(config)
