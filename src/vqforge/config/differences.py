"""Where a run from the user's own config files behaves differently from the user's previous system, and why.

vqforge reads the seed format and its later version with the meanings they had there, but does not copy that
system's defects. `previous_system_differences(cfg)` lists the differences that apply to one resolved config, as
short lines; `vqforge train` prints them once at start-up. Native and taming-format configs have none.
"""

from __future__ import annotations

from .schema import Config

HEADER = "differs from the previous system (on purpose):"


def previous_system_differences(cfg: Config) -> list[str]:
    """The lines of the start-up "differs from the previous system" block for `cfg` ([] for other formats)."""
    if cfg._format not in ("seed", "later"):
        return []
    first = cfg._format == "seed"
    m, loss, data, t = cfg.model, cfg.loss, cfg.data, cfg.train
    out: list[str] = []
    if not loss.use_gan:
        extra = " (and, for taming models, a second LPIPS + discriminator)" if m.family == "taming" else ""
        out.append("use_gan is false: no discriminator is built, trained or saved; the previous system still built "
                   f"one{extra} and only zeroed its weight")
    if first and not data.use_images and data.source == "files":
        out.append("video frames are decoded in RGB order; the previous system fed its first version's models OpenCV's "
                   "BGR frames (only image files were converted to RGB)")
    if data.source == "files":
        out.append(f"frames are resized on their shorter side to {data.resize or data.resolution} and center-cropped "
                   f"to {data.resolution}×{data.resolution}; the previous system stretched whole frames to "
                   f"{data.resolution}×{data.resolution} (the same for square frames)")
        took = "every entry" if first else "the image or video files"
        out.append(f"data folders are searched recursively for image and video files; the previous system took {took} "
                   "at the folder's top level only")
    if first and data.shuffle:
        out.append("training samples are shuffled (every epoch, reproducibly from train.seed); the previous system "
                   "read them in a fixed order (--set data.shuffle=false for that)")
    if loss.use_gan and first and m.family == "taming" and t.disc_update_every != 1:
        out.append(f"the discriminator trains every {t.disc_update_every} generator steps, as the previous system's "
                   "notes describe; its code stepped the taming discriminator every step "
                   "(--set train.disc_update_every=1 for that)")
    if loss.use_gan and m.family != "taming":
        out.append("the adversarial weight is taming's adaptive weight (clamped at 1e4) × disc_weight (0.8); the "
                   "previous system clamped it at 1e2, scaled it by min(1, |step − disc_start| / (2·disc_start)) "
                   "and added noise to the discriminator's inputs, which vqforge does not")
    if first and t.lr_schedule == "exponential" and t.lr_decay < 1:
        out.append(f"the learning rate is multiplied by {t.lr_decay:g} from step {t.lr_decay_every} on, every "
                   f"{t.lr_decay_every} steps; the previous system's scheduler changed it one step later")
    out.append("checkpoints are safetensors weights plus the full training state (both optimizers, step, data "
               "position, random states), loaded without unpickling code; resuming continues at the exact step")
    return out


def format_differences(lines: list[str]) -> str:
    return HEADER + "\n" + "\n".join(f"  - {line}" for line in lines)


__all__ = ["previous_system_differences", "format_differences", "HEADER"]
