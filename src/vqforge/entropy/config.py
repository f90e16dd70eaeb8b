"""Config of `vqforge entropy train`: a native layout, and the previous system's `transformer_config.json` layout.

Native (YAML or JSON; every key optional except `tokenizer.path` and `data.train`):

    model:     name (transformer_ar | masked_groups), vocab_size (null = the tokenizer's; a different value is an
               error), d_model, num_layers, nhead, ff_hidden_dim (null = 3·d_model), dropout, max_seq_len
               (transformer_ar), num_groups, group_schedule (cosine | uniform), max_positions, patch_size
               (masked_groups; patch_size: p×p tokens per Transformer position, for large grids)
    tokenizer: path (exported model, checkpoint or run directory), config + weights (a config file and a weights
               file instead of path), ema, resolution (center crop; null = the tokenizer's data.resolution),
               cache_dir (token shards; null = RUN_DIR/tokens)
    data:      train, val (lists of files, folders, globs), sequence_length (frames per training sample; the first
               frame of a sample is coded intra), train_num_samples, val_num_samples (null = all)
    train:     batch_size, grad_accum_steps, num_steps or epochs, lr, weight_decay, betas, warmup_steps,
               lr_schedule (constant | cosine), grad_clip, precision (fp32 | bf16), seed, save_interval,
               validation_interval, val_start_step, validation_coded (also report the rate `vqforge compress`
               gets on the whole validation clips: segments of validation_intra_period frames, adaptive mixing),
               validation_intra_period, keep_last, device, out_dir, resume
    log:       every, tensorboard, progress

The previous system's layout has the sections `model`, `data`, `vqgan`, `training`, `output`, `device`; see
`USER_KEYS` for how each key maps. Its `nhead`, `max_seq_len`, `dropout`, `ff_hidden_dim` take effect here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config.parse import from_dict, require, to_dict, unknown_key_error
from ..errors import ConfigError


@dataclass
class EntropyModelConfig:
    name: Literal["transformer_ar", "masked_groups"] = "masked_groups"
    vocab_size: int | None = None  # null = the tokenizer's codebook size; another value is an error
    d_model: int = 256
    num_layers: int = 4
    nhead: int = 8
    ff_hidden_dim: int | None = None  # null = 3 * d_model
    dropout: float = 0.0
    max_seq_len: int = 16384  # transformer_ar: longest sequence (previous frame + frame tokens)
    num_groups: int = 6  # masked_groups: coding groups per depth
    group_schedule: Literal["cosine", "uniform"] = "cosine"  # masked_groups: group sizes
    max_positions: int = 4096  # masked_groups: largest token grid H*W
    patch_size: int = 1  # masked_groups: p×p token positions per Transformer position (1, or 2 / 4 for f4 grids)

    def check(self, path: str) -> None:
        p = path or "model"
        require(self.d_model >= 2, f"{p}.d_model", "must be >= 2", "use e.g. 256")
        require(self.num_layers >= 1, f"{p}.num_layers", "must be >= 1", "use e.g. 4")
        require(self.nhead >= 1 and self.d_model % self.nhead == 0, f"{p}.nhead",
                f"must divide d_model ({self.d_model})", "use e.g. 8")
        require(0.0 <= self.dropout < 1.0, f"{p}.dropout", "must be in [0, 1)", "use 0.0")
        require(self.num_groups >= 1, f"{p}.num_groups", "must be >= 1", "use 4 to 8")
        require(self.patch_size >= 1, f"{p}.patch_size", "must be >= 1", "use 1, or 2 / 4 for large token grids")
        require(self.max_seq_len >= 2, f"{p}.max_seq_len", "must be >= 2", "use e.g. 16384")


@dataclass
class EntropyTokenizerConfig:
    path: str | None = None  # exported model / checkpoint / run directory
    config: str | None = None  # with `weights`: a tokenizer config file (any vqforge format) ...
    weights: str | None = None  # ... and its weights (.safetensors, a taming .ckpt, or a vqforge directory)
    ema: bool = False
    resolution: int | None = None  # center-crop size; null = the tokenizer's data.resolution
    cache_dir: str | None = None  # where token shards go; null = RUN_DIR/tokens

    def check(self, path: str) -> None:
        p = path or "tokenizer"
        require(self.path is not None or self.weights is not None, p, "names no tokenizer",
                "set tokenizer.path (in transformer_config.json: vqgan.vq_ckpt) to a trained vqforge tokenizer "
                "(run, checkpoint or exported directory)")
        require(self.path is None or self.weights is None, p, "sets both path and weights",
                "give either tokenizer.path or tokenizer.config + tokenizer.weights")
        require(self.resolution is None or self.resolution >= 8, f"{p}.resolution", "must be >= 8", "use e.g. 256")


@dataclass
class EntropyDataConfig:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    sequence_length: int = 4  # frames per training sample (its first frame is intra)
    train_num_samples: int | None = None  # use at most this many training samples (null = all)
    val_num_samples: int | None = None

    def check(self, path: str) -> None:
        p = path or "data"
        require(bool(self.train), f"{p}.train", "is empty", "list training videos/images (files, folders, globs)")
        require(self.sequence_length >= 1, f"{p}.sequence_length", "must be >= 1", "use e.g. 4")
        for k in ("train_num_samples", "val_num_samples"):
            v = getattr(self, k)
            require(v is None or v >= 1, f"{p}.{k}", "must be >= 1", "use null for all")


@dataclass
class EntropyTrainConfig:
    batch_size: int = 8  # training samples per process and step
    grad_accum_steps: int = 1
    num_steps: int | None = None
    epochs: int | None = None  # instead of num_steps: passes over the training samples
    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float | None = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    save_interval: int = 500
    validation_interval: int = 250
    val_start_step: int = 0  # no validation before this step
    validation_coded: bool = True  # also the coder's rate on whole validation clips (adaptive mixing, as compress)
    validation_intra_period: int = 32  # frames per segment there (compress's --intra-period)
    keep_last: int = 2
    device: str = "auto"
    out_dir: str | None = None
    resume: str | None = None  # a run or checkpoint directory; the CLI's --resume wins
    dist_timeout_s: int = 600

    def check(self, path: str) -> None:
        p = path or "train"
        require(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1", "use e.g. 8")
        require(self.grad_accum_steps >= 1, f"{p}.grad_accum_steps", "must be >= 1", "use 1")
        require(not (self.num_steps is not None and self.epochs is not None), p, "sets both num_steps and epochs",
                "keep one of them")
        require(self.num_steps is None or self.num_steps >= 1, f"{p}.num_steps", "must be >= 1", "use e.g. 2000")
        require(self.epochs is None or self.epochs >= 1, f"{p}.epochs", "must be >= 1", "use e.g. 10")
        require(self.lr > 0, f"{p}.lr", "must be > 0", "use e.g. 3e-4")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{p}.betas",
                "must be two numbers in [0, 1)", "use [0.9, 0.98]")
        require(self.grad_clip is None or self.grad_clip > 0, f"{p}.grad_clip", "must be > 0", "use null for none")
        for k in ("save_interval", "validation_interval", "validation_intra_period", "keep_last", "dist_timeout_s"):
            require(getattr(self, k) >= 1, f"{p}.{k}", "must be >= 1", "use a positive number")
        require(self.warmup_steps >= 0 and self.val_start_step >= 0, p, "warmup_steps and val_start_step must be "
                ">= 0", "use 0")


@dataclass
class EntropyLogConfig:
    every: int = 10
    tensorboard: bool = True
    progress: bool = True

    def check(self, path: str) -> None:
        require(self.every >= 1, f"{path or 'log'}.every", "must be >= 1", "use e.g. 10")


@dataclass
class EntropyConfig:
    model: EntropyModelConfig = field(default_factory=EntropyModelConfig)
    tokenizer: EntropyTokenizerConfig = field(default_factory=EntropyTokenizerConfig)
    data: EntropyDataConfig = field(default_factory=EntropyDataConfig)
    train: EntropyTrainConfig = field(default_factory=EntropyTrainConfig)
    log: EntropyLogConfig = field(default_factory=EntropyLogConfig)


# --- the previous system's transformer_config.json -----------------------------------------------------------------
# key -> native path, or None for "read, but no effect here" (listed in a warning when set)
USER_KEYS: dict[str, dict[str, str | None]] = {
    "model": {"vocab_size": "model.vocab_size", "d_model": "model.d_model", "num_layers": "model.num_layers",
              "nhead": "model.nhead", "max_seq_len": "model.max_seq_len", "dropout": "model.dropout",
              "ff_hidden_dim": "model.ff_hidden_dim", "name": "model.name", "num_groups": "model.num_groups"},
    "data": {"seq_len": None, "sequence_length": "data.sequence_length", "image_size": "tokenizer.resolution",
             "train_data_dir": "data.train", "val_data_dir": "data.val",
             "train_num_samples": "data.train_num_samples", "val_num_samples": "data.val_num_samples"},
    "vqgan": {"vq_config": "tokenizer.config", "vq_ckpt": "tokenizer.weights"},
    "training": {"batch_size": "train.batch_size", "grad_accum_steps": "train.grad_accum_steps",
                 "use_amp": "train.precision", "epochs": "train.epochs", "lr": "train.lr",
                 "weight_decay": "train.weight_decay", "seed": "train.seed", "resume": "train.resume",
                 "val_start_epoch": "train.val_start_step"},
    "output": {"output_dir": "train.out_dir", "recon_output_dir": None, "original_output_dir": None},
}
USER_NO_EFFECT = {
    "data.seq_len": "the sequence is one frame plus its previous frame as prefix; model.max_seq_len bounds it",
    "output.recon_output_dir": "entropy training writes no reconstructions (use `vqforge decode`)",
    "output.original_output_dir": "entropy training writes no cropped originals",
}


def is_user_layout(raw: dict) -> bool:
    return "vqgan" in raw or "training" in raw or "output" in raw


def _set(d: dict, path: str, value: Any) -> None:
    sec, key = path.split(".")
    d.setdefault(sec, {})[key] = value


def user_to_native(raw: dict) -> tuple[dict, list[str], dict]:
    """(native dict, warnings, epoch-based settings to resolve later) from the previous system's layout."""
    out: dict[str, dict] = {"model": {"name": "transformer_ar"}}
    warns: list[str] = []
    later: dict[str, Any] = {}
    for sec, value in raw.items():
        if sec == "device" and value is not None:
            _set(out, "train.device", str(value))
            later["device_fallback"] = True  # the previous system trained on the CPU when CUDA was missing
            continue
        if sec not in USER_KEYS:
            raise unknown_key_error("<root>", sec, list(USER_KEYS) + ["device"])
        if not isinstance(value, dict):
            raise ConfigError(sec, f"expected a mapping, got {value!r}", "write it as key: value pairs")
        for key, v in value.items():
            if key not in USER_KEYS[sec]:
                raise unknown_key_error(sec, key, USER_KEYS[sec])
            target = USER_KEYS[sec][key]
            if target is None:
                if v not in (None, ""):
                    warns.append(f"{sec}.{key} has no effect: {USER_NO_EFFECT[f'{sec}.{key}']}")
                continue
            if v is None or v == "":
                continue  # the previous system's "not set"
            if key in ("train_data_dir", "val_data_dir"):
                v = [v] if isinstance(v, str) else v
            elif key == "use_amp":
                v = "bf16" if v else "fp32"
            elif key == "val_start_epoch":
                later["val_start_epoch"] = v
                continue
            _set(out, target, v)
    return out, warns, later


def parse_entropy_config(raw: Any) -> tuple[EntropyConfig, list[str], dict]:
    """(config, warnings, epoch-based settings) from a raw mapping in either layout."""
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"expected a mapping, got {type(raw).__name__}", "write the config as a mapping")
    warns: list[str] = []
    later: dict[str, Any] = {}
    if is_user_layout(raw):
        raw, warns, later = user_to_native(raw)
    cfg = from_dict(EntropyConfig, raw)
    if cfg.model.name == "transformer_ar":
        extra = [k for k in ("num_groups", "group_schedule", "max_positions", "patch_size")
                 if k in raw.get("model", {})]
    else:
        extra = [k for k in ("max_seq_len",) if k in raw.get("model", {})]
    if extra:
        warns.append(f"model.{', model.'.join(extra)} have no effect with model.name {cfg.model.name}")
    return cfg, warns, later


def load_entropy_config(path: str | Path, overrides: list[str] = ()) -> tuple[EntropyConfig, list[str], dict]:
    from ..config.readers import loads_yaml, read_raw

    raw = read_raw(path)
    if overrides:
        if is_user_layout(raw):
            raw, warns0, later0 = user_to_native(raw)
        else:
            warns0, later0 = [], {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError("--set", f"{item!r} is not KEY=VALUE", "write e.g. --set train.lr=1e-4")
            key, text = item.split("=", 1)
            key = key.strip()
            value = loads_yaml(text, f"--set {key}") if text.strip() else None
            parts = key.split(".")
            d = raw
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            d[parts[-1]] = value
        cfg, warns, later = parse_entropy_config(raw)
        return cfg, warns0 + warns, {**later0, **later}
    return parse_entropy_config(raw)


def config_text(cfg: EntropyConfig) -> str:
    import json

    return json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n"
