"""VQGAN losses: pixel reconstruction, LPIPS-VGG perceptual, PatchGAN discriminator, adversarial terms, objective."""

from __future__ import annotations

from .adversarial import adaptive_weight, adopt_weight, hinge_d_loss, vanilla_d_loss
from .discriminator import ActNorm, NLayerDiscriminator
from .objective import LossOutput, VQGANObjective, build_discriminator, build_objective
from .perceptual import LPIPS, build_lpips
from .reconstruction import pixel_loss
from .vgg import VGG16Features, load_vgg16_weights

__all__ = [
    "ActNorm", "LPIPS", "LossOutput", "NLayerDiscriminator", "VGG16Features", "VQGANObjective",
    "adaptive_weight", "adopt_weight", "build_discriminator", "build_lpips", "build_objective", "hinge_d_loss",
    "load_vgg16_weights", "pixel_loss", "vanilla_d_loss",
]
