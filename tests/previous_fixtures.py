"""Checkpoint files as the user's previous system wrote them, built from that code's construction rules.

Nothing here uses vqforge's models: key names, their order, the optimizers' parameter order and the file layout are
written down from the previous system's modules (taming's VQModel/EMAVQ with its Lightning `loss` module inside,
the VQ-VAE-2 model with its three aliases, the PatchGAN discriminators), so loading them into vqforge is a real test.

- `first_version_taming(...)`: `trainVqVae.py`'s `{'steps', 'state_dict', 'optimizer', 'scheduler', 'optimizer_disc'}`
- `first_version_vqvae2(...)`: the same with `'discriminator_state'` + `'optimizer_disc'` (non-taming GAN)
- `later_version_taming(...)`: `train/train.py`'s `{'step', 'model', 'opt_ae', 'opt_disc', 'config', 'metrics'}`
Optimizer and scheduler states are real `torch.optim.Adam` / `ExponentialLR` state dicts, produced by stepping them
over stand-in tensors in the order the previous system handed its parameters to the optimizer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

Shapes = dict[str, tuple[int, ...]]


# ---- taming modules (taming.modules.diffusionmodules.model), registration order -----------------------------------
def _norm(p: str, c: int) -> Shapes:  # GroupNorm
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _conv(p: str, cout: int, cin: int, k: int, bias: bool = True) -> Shapes:
    out = {f"{p}.weight": (cout, cin, k, k)}
    if bias:
        out[f"{p}.bias"] = (cout,)
    return out


def _resnet(p: str, cin: int, cout: int) -> Shapes:
    out = {**_norm(f"{p}.norm1", cin), **_conv(f"{p}.conv1", cout, cin, 3), **_norm(f"{p}.norm2", cout),
           **_conv(f"{p}.conv2", cout, cout, 3)}
    if cin != cout:
        out |= _conv(f"{p}.nin_shortcut", cout, cin, 1)
    return out


def _attn(p: str, c: int) -> Shapes:
    return {**_norm(f"{p}.norm", c), **{k: v for n in ("q", "k", "v", "proj_out") for k, v in _conv(f"{p}.{n}", c, c, 1).items()}}


def taming_encoder_decoder(dd: dict) -> Shapes:
    ch, mult, nrb, attn_res = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["attn_resolutions"]
    z, res = dd["z_channels"], dd["resolution"]
    n = len(mult)
    out: Shapes = _conv("encoder.conv_in", ch, dd.get("in_channels", 3), 3)
    in_mult = (1, *mult)
    cur = res
    block_in = ch
    for i in range(n):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        attns: Shapes = {}
        for b in range(nrb):
            out |= _resnet(f"encoder.down.{i}.block.{b}", block_in, block_out)
            block_in = block_out
            if cur in attn_res:
                attns |= _attn(f"encoder.down.{i}.attn.{len(attns) // 10}", block_in)
        out |= attns  # ModuleList `block` is registered before `attn`
        if i != n - 1:
            out |= _conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
            cur //= 2
    out |= {**_resnet("encoder.mid.block_1", block_in, block_in), **_attn("encoder.mid.attn_1", block_in),
            **_resnet("encoder.mid.block_2", block_in, block_in), **_norm("encoder.norm_out", block_in),
            **_conv("encoder.conv_out", 2 * z if dd.get("double_z", False) else z, block_in, 3)}
    block_in = ch * mult[-1]
    cur = res // 2 ** (n - 1)
    out |= {**_conv("decoder.conv_in", block_in, z, 3), **_resnet("decoder.mid.block_1", block_in, block_in),
            **_attn("decoder.mid.attn_1", block_in), **_resnet("decoder.mid.block_2", block_in, block_in)}
    levels: dict[int, Shapes] = {}
    for i in reversed(range(n)):
        lv: Shapes = {}
        attns = {}
        block_out = ch * mult[i]
        for b in range(nrb + 1):
            lv |= _resnet(f"decoder.up.{i}.block.{b}", block_in, block_out)
            block_in = block_out
            if cur in attn_res:
                attns |= _attn(f"decoder.up.{i}.attn.{len(attns) // 10}", block_in)
        lv |= attns
        if i != 0:
            lv |= _conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
            cur *= 2
        levels[i] = lv
    for i in range(n):  # `self.up.insert(0, up)`: the list (and its keys) run from level 0 up
        out |= levels[i]
    out |= {**_norm("decoder.norm_out", block_in), **_conv("decoder.conv_out", dd.get("out_ch", 3), block_in, 3)}
    return out


def _bn(p: str, c: int) -> Shapes:
    return {f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
            f"{p}.num_batches_tracked": ()}


def patchgan(prefix: str, input_nc: int, ndf: int, n_layers: int) -> Shapes:
    """taming's NLayerDiscriminator (`main.N`) and the first version's own Discriminator (`model.N`) share this
    layout: conv(+bias), LeakyReLU, then per layer conv(no bias), BatchNorm, LeakyReLU; last conv(+bias)."""
    out = _conv(f"{prefix}.0", ndf, input_nc, 4)
    idx, mult = 2, 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** n, 8)
        out |= {**_conv(f"{prefix}.{idx}", ndf * mult, ndf * prev, 4, bias=False), **_bn(f"{prefix}.{idx + 1}", ndf * mult)}
        idx += 3
    return out | _conv(f"{prefix}.{idx}", 1, ndf * mult, 4)


def lpips_standins() -> Shapes:
    """taming's LPIPS key names (`loss.perceptual_loss.*`); vqforge drops them unread, so the VGG tensors are
    stand-ins of shape (1,) instead of 14.7M numbers."""
    out: Shapes = {"loss.perceptual_loss.scaling_layer.shift": (1, 3, 1, 1),
                   "loss.perceptual_loss.scaling_layer.scale": (1, 3, 1, 1)}
    for s, idxs in ((1, (0, 2)), (2, (5, 7)), (3, (10, 12, 14)), (4, (17, 19, 21)), (5, (24, 26, 28))):
        for i in idxs:
            out |= {f"loss.perceptual_loss.net.slice{s}.{i}.weight": (1,), f"loss.perceptual_loss.net.slice{s}.{i}.bias": (1,)}
    for i, c in enumerate((64, 128, 256, 512, 512)):
        out[f"loss.perceptual_loss.lin{i}.model.1.weight"] = (1, c, 1, 1)
    return out


def taming_state_shapes(dd: dict, n_embed: int, embed_dim: int, variant: str, disc: dict) -> Shapes:
    """A taming VQModel/EMAVQ's state_dict in its order: encoder, decoder, loss (LPIPS, discriminator), quantize,
    quant_conv, post_quant_conv (EMAVQ replaces `quantize` after construction; the slot keeps its place)."""
    out = taming_encoder_decoder(dd)
    out |= lpips_standins()
    out |= patchgan("loss.discriminator.main", disc["in_channels"], disc["ndf"], disc["n_layers"])
    if variant == "EMAVQ":  # EMAVectorQuantizer -> EmbeddingEMA: weight, cluster_size, embed_avg (all Parameters)
        out |= {"quantize.embedding.weight": (n_embed, embed_dim), "quantize.embedding.cluster_size": (n_embed,),
                "quantize.embedding.embed_avg": (n_embed, embed_dim)}
    else:
        out |= {"quantize.embedding.weight": (n_embed, embed_dim)}
    z = dd["z_channels"]
    return out | _conv("quant_conv", embed_dim, 2 * z if dd.get("double_z", False) else z, 1) | _conv("post_quant_conv", z, embed_dim, 1)


def taming_opt_ae_order(shapes: Shapes, variant: str) -> list[str]:
    """`configure_optimizers`: encoder, decoder, [quantize (VQModel only)], quant_conv, post_quant_conv parameters."""
    groups = ("encoder", "decoder", "quant_conv", "post_quant_conv") if variant == "EMAVQ" else \
        ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv")
    return [k for g in groups for k in shapes if k.split(".", 1)[0] == g]


# ---- VQ-VAE-2 of the first version (models/vqvae2/vqvae.py VQVAE) ------------------------------------------------
def vqvae2_state_shapes(v) -> Shapes:
    """Registration order (encoders, codebooks, decoders, upscalers), then the aliases encoder (= encoders.0),
    decoder (= decoders.0), vq_vae (= codebooks) that the model registered for the training script."""
    from test_vqvae2 import reference_state_dict_shapes  # the reference layout, written from its construction rules

    ref = reference_state_dict_shapes(v)
    order = ("encoders", "codebooks", "decoders", "upscalers")
    out: Shapes = {k: ref[k] for g in order for k in ref if k.split(".", 1)[0] == g}
    for alias, target in (("encoder.", "encoders.0."), ("decoder.", "decoders.0."), ("vq_vae.", "codebooks.")):
        out |= {alias + k[len(target):]: s for k, s in list(out.items()) if k.startswith(target)}
    return out


def vqvae2_param_order(shapes: Shapes) -> list[str]:
    """`Adam(model.parameters())`: parameters once each (aliases are the same objects), buffers excluded."""
    buffers = (".running_mean", ".running_var", ".num_batches_tracked", ".embed", ".embed_avg", ".cluster_size")
    return [k for k in shapes if not k.startswith(("encoder.", "decoder.", "vq_vae.")) and not k.endswith(buffers)]


def disc_param_order(shapes: Shapes) -> list[str]:
    return [k for k in shapes if not k.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]


# ---- values, optimizers, files -------------------------------------------------------------------------------------
def fill(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(5)
        elif k.endswith(("running_var", "cluster_size")):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.05
    return out


def link_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for alias, target in (("encoder.", "encoders.0."), ("decoder.", "decoders.0."), ("vq_vae.", "codebooks.")):
        for k in [k for k in state if k.startswith(alias)]:
            state[k] = state[target + k[len(alias):]]
    return state


def adam_state(state: dict[str, torch.Tensor], order: list[str], *, lr: float, betas=(0.5, 0.9), steps: int = 2,
               seed: int = 0) -> dict:
    """A real Adam state dict over `order` (the previous system's parameter order), after `steps` updates."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(state[k].clone().float()) for k in order]
    opt = torch.optim.Adam(params, lr=lr, betas=betas)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt.state_dict()


def exponential_lr_state(lr: float, gamma: float, decays: int) -> dict:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sch = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    for _ in range(decays):
        opt.step()
        sch.step()
    return sch.state_dict()


def first_version_taming(path: Path, *, dd: dict, n_embed: int, embed_dim: int, variant: str = "EMAVQ",
                         disc: dict | None = None, steps: int = 4, lr: float = 1e-3, gamma: float = 0.99,
                         decays: int = 0, seed: int = 0) -> dict:
    disc = disc or {"in_channels": 3, "ndf": 64, "n_layers": 3}
    shapes = taming_state_shapes(dd, n_embed, embed_dim, variant, disc)
    state = fill(shapes, seed)
    ckpt = {
        "steps": steps,
        "state_dict": state,
        "optimizer": adam_state(state, taming_opt_ae_order(shapes, variant), lr=lr, seed=seed + 1),
        "scheduler": exponential_lr_state(lr, gamma, decays),
        "optimizer_disc": adam_state({k[len("loss.discriminator."):]: v for k, v in state.items()},
                                     disc_param_order({k[len("loss.discriminator."):]: s for k, s in shapes.items()
                                                       if k.startswith("loss.discriminator.")}),
                                     lr=lr, seed=seed + 2),
    }
    torch.save(ckpt, path)
    return ckpt


def first_version_vqvae2(path: Path, v, *, gan: bool = True, disc: dict | None = None, steps: int = 4,
                         lr: float = 1e-3, gamma: float = 0.99, decays: int = 0, seed: int = 0) -> dict:
    shapes = vqvae2_state_shapes(v)
    state = link_aliases(fill(shapes, seed))
    ckpt = {
        "steps": steps,
        "state_dict": state,
        "optimizer": adam_state(state, vqvae2_param_order(shapes), lr=lr, betas=(0.9, 0.999), seed=seed + 1),
        "scheduler": exponential_lr_state(lr, gamma, decays),
    }
    if gan:  # LossCalculator.get_checkpoint_state()
        disc = disc or {"in_channels": 3, "ndf": 64, "n_layers": 3}
        d_shapes = patchgan("model", disc["in_channels"], disc["ndf"], disc["n_layers"])
        d_state = fill(d_shapes, seed + 3)
        ckpt["discriminator_state"] = d_state
        ckpt["optimizer_disc"] = adam_state(d_state, disc_param_order(d_shapes), lr=lr, seed=seed + 4)
    torch.save(ckpt, path)
    return ckpt


def later_version_taming(path: Path, *, dd: dict, n_embed: int, embed_dim: int, variant: str = "EMAVQ",
                         disc: dict | None = None, step: int = 4, num_steps: int = 50000, lr: float = 1e-4,
                         prefix: str = "_model.", empty_model: bool = False, rvq_levels: int | None = None,
                         seed: int = 0) -> dict:
    disc = disc or {"in_channels": 3, "ndf": 64, "n_layers": 3}
    shapes = taming_state_shapes(dd, n_embed, embed_dim, variant, disc)
    state = fill(shapes, seed)
    model_args = {"model_variant": variant, "n_embed": n_embed, "embed_dim": embed_dim, "ddconfig": dd}
    if rvq_levels is not None:
        model_args["rvq_levels"] = rvq_levels
    ckpt = {
        "step": step,
        "model": {} if empty_model else {prefix + k: v for k, v in state.items()},
        "opt_ae": adam_state(state, taming_opt_ae_order(shapes, variant), lr=lr, seed=seed + 1),
        "opt_disc": adam_state({k[len("loss.discriminator."):]: v for k, v in state.items()},
                               disc_param_order({k[len("loss.discriminator."):]: s for k, s in shapes.items()
                                                 if k.startswith("loss.discriminator.")}), lr=lr, seed=seed + 2),
        "config": {"model_type": "TamingVQGAN", "model_args": model_args,
                   "train": {"num_steps": num_steps, "lr": lr, "resume_ckpt": None}},
        "metrics": {"val/psnr": 20.5},
    }
    torch.save(ckpt, path)
    return ckpt


__all__ = ["first_version_taming", "first_version_vqvae2", "later_version_taming", "taming_state_shapes",
           "taming_opt_ae_order", "vqvae2_state_shapes", "vqvae2_param_order", "patchgan"]
