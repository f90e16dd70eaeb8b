"""`vqforge.from_taming(dir)`: a model of the taming-transformers model zoo, straight from its directory.

The zoo's archives (and every taming training run's log directory) hold

    <dir>/configs/model.yaml      (or one `<timestamp>-project.yaml`)   the taming training config
    <dir>/checkpoints/last.ckpt   (or one other `.ckpt`)                the PyTorch Lightning checkpoint

`from_taming` reads the YAML with the taming-config reader, loads the checkpoint without running pickled code and
loads its weights strictly into the vqforge model, all in memory (the same steps as `vqforge convert`, without
writing an exported directory). To keep the model, `vqforge convert` or `save_pretrained` it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

PREFERRED_CONFIG = "model.yaml"
PREFERRED_CHECKPOINT = "last.ckpt"


def _one_file(folder: Path, preferred: str, pattern: str, what: str) -> Path:
    """folder/preferred, else the only file matching `pattern` in folder; a CheckpointError naming the fix else."""
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{folder}: no {what} ({preferred} or {pattern})\n  fix: pass a taming model directory "
                              f"(configs/{PREFERRED_CONFIG} and checkpoints/{PREFERRED_CHECKPOINT}), or use "
                              "`vqforge convert CKPT --config YAML --out DIR` for other layouts")
    names = ", ".join(p.name for p in found)
    raise CheckpointError(f"{folder}: several {what}s ({names}) and no {preferred}\n  fix: keep one, or convert the "
                          "one you mean with `vqforge convert CKPT --config YAML --out DIR`")


def taming_zoo_files(path: str | Path) -> tuple[Path, Path]:
    """(config YAML, checkpoint) of a taming model directory."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory\n  fix: pass the taming model directory that holds configs/ "
                              "and checkpoints/")
    return (_one_file(root / "configs", PREFERRED_CONFIG, "*.yaml", "config YAML"),
            _one_file(root / "checkpoints", PREFERRED_CHECKPOINT, "*.ckpt", "checkpoint"))


def from_taming(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The VQGAN of a taming-transformers model directory (configs/model.yaml + checkpoints/last.ckpt), converted
    in memory, in eval mode on `map_location`. Its taming shims (`encode(x, return_dict=False)`, `decode_code`,
    `quantize.get_codebook_entry`) behave as taming's."""
    from ..config import load_config_with_warnings
    from ..safe_pickle import load_checkpoint
    from .convert import taming_model_from_checkpoint
    from .previous import is_previous_checkpoint

    yaml_path, ckpt_path = taming_zoo_files(path)
    cfg, _ = load_config_with_warnings(yaml_path)  # notices about training settings do not concern loading
    ckpt = load_checkpoint(ckpt_path)
    if is_previous_checkpoint(ckpt):
        raise CheckpointError(f"{ckpt_path}: a checkpoint of the previous system, not a taming Lightning checkpoint\n"
                              f"  fix: `vqforge convert {ckpt_path} --config CONFIG --out DIR`, then "
                              "from_pretrained(DIR)")
    model, _ = taming_model_from_checkpoint(ckpt, cfg, str(ckpt_path))
    return model.to(map_location).eval()


__all__ = ["from_taming", "taming_zoo_files"]
