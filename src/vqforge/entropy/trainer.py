"""`vqforge entropy train`: tokens -> entropy model, with the tokenizer trainer's habits.

Run directory: `entropy_config.json` (the resolved config), `train.log`, `metrics.jsonl`, `tensorboard/`,
`tokens/` (the token cache, unless tokenizer.cache_dir says otherwise), `checkpoints/step_XXXXXXXX/`
(`config.json` + `model.safetensors`, loadable by `load_entropy_model`, and `training_state.*`: optimizer, step,
RNG states, data position), and `model/` (the final model, what the codec takes).

A training sample is a window of `data.sequence_length` consecutive frames of one clip: its first frame is coded
intra, every other frame from its previous frame. The loss is the mean negative log-likelihood in bits per
predicted token. Validation codes every validation window exactly as the coder does (teacher-forced logits that
equal the step-by-step ones) and reports bits per token (overall, intra, inter, per residual depth), the ratio to
log2 K, bits per pixel, and decode passes per frame. With `train.validation_coded` it also reports `coded_*`: the
rate `vqforge compress` gets on each whole validation clip (segments of `train.validation_intra_period` frames,
adaptive mixing with the clip's own statistics, the coder's integer frequencies) — the number that decides file
sizes, since a model that fits its training clips can lose to the mixing on new ones.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist
from ..config.parse import to_dict
from ..config.schema import LogConfig
from ..errors import CheckpointError, TrainingError
from ..train.build import seed_everything
from ..utils import resolve_device
from ..train.checkpoint import Checkpointer, resolve_checkpoint
from ..train.logger import RunLogger, Throughput
from ..train.state import load_tree, rng_state, set_rng_state
from .base import FrameLayout, build_entropy_model, save_entropy_model
from .config import EntropyConfig
from .models import TrainableEntropyModel
from .tokens import TokenSet, cached_tokens, load_tokenizer, windows

LN2 = math.log(2.0)


def build_model(cfg: EntropyConfig, layout: FrameLayout) -> TrainableEntropyModel:
    m = cfg.model
    common = dict(vocab_size=layout.vocab_size, d_model=m.d_model, num_layers=m.num_layers, nhead=m.nhead,
                  ff_hidden_dim=m.ff_hidden_dim, dropout=m.dropout)
    if m.name == "transformer_ar":
        model = build_entropy_model(m.name, max_seq_len=m.max_seq_len, **common)
    else:
        model = build_entropy_model(m.name, depth=layout.depth, num_groups=m.num_groups,
                                    group_schedule=m.group_schedule, max_positions=m.max_positions,
                                    patch_size=m.patch_size, **common)
    model.check_layout(layout)
    return model


def check_vocab(cfg: EntropyConfig, tokenizer_codes: list[int]) -> None:
    from ..errors import ConfigError

    k = tokenizer_codes[0]
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != k:
        raise ConfigError("model.vocab_size", f"is {cfg.model.vocab_size}, but the tokenizer has {k} codes",
                          f"remove model.vocab_size (it is taken from the tokenizer) or set it to {k}")


def total_steps(cfg: EntropyConfig, num_samples: int, world_size: int) -> int:
    """train.num_steps, or train.epochs passes over `num_samples` training windows."""
    t = cfg.train
    if t.num_steps is not None:
        return t.num_steps
    per_step = t.batch_size * t.grad_accum_steps * world_size
    return max(1, (t.epochs or 1) * math.ceil(num_samples / per_step))


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class WindowStream:
    """Deterministic order of training windows: a permutation per epoch from (seed, epoch); each global batch of
    `batch_size · world` windows is split over the ranks. The position is (epoch, batch) — a resume continues it."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int):
        self.n, self.b, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.batch = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self) -> list[int]:
        g = self.b * self.world
        per_epoch = max(1, self.n // g) if self.n >= g else 1
        if self.batch >= per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        order = self._order()
        if self.n < g:  # fewer windows than one global batch: repeat the permutation
            order = np.resize(order, g)
        chunk = order[self.batch * g:(self.batch + 1) * g]
        self.batch += 1
        return [int(i) for i in chunk[self.rank::self.world]]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.batch = int(s["epoch"]), int(s["batch"])


def frames_of(tokens: TokenSet, wins: list[tuple[int, int, int]], device) -> tuple[torch.Tensor | None, tuple | None]:
    """(intra frames (n, D, H, W), (prev, cur) pairs) of a list of windows."""
    intra, prev, cur = [], [], []
    for c, s, t in wins:
        clip = tokens.clips[c]
        intra.append(clip[s])
        for f in range(s + 1, s + t):
            prev.append(clip[f - 1])
            cur.append(clip[f])
    a = torch.stack(intra).to(device) if intra else None
    b = (torch.stack(prev).to(device), torch.stack(cur).to(device)) if cur else None
    return a, b


@torch.no_grad()
def measure(model: TrainableEntropyModel, tokens: TokenSet, wins: list[tuple[int, int, int]], device,
            frames_per_call: int = 8) -> dict[str, float]:
    """Exact coding cost of `wins` (sums over this rank's share, all-reduced): bits per token overall, intra,
    inter and per depth; bits per pixel; decode passes per frame."""
    layout = tokens.layout
    D, hw = layout.depth, layout.height * layout.width
    sums = torch.zeros(4 + D, dtype=torch.float64)  # bits, intra bits, intra tokens, inter tokens, per-depth bits
    mine = wins[dist.rank()::dist.world_size()]
    n_tok = 0
    for i in range(0, len(mine), max(1, frames_per_call)):
        intra, pairs = frames_of(tokens, mine[i:i + frames_per_call], device)
        for kind, cur, prev in (("intra", intra, None), ("inter", None if pairs is None else pairs[1],
                                                        None if pairs is None else pairs[0])):
            if cur is None:
                continue
            logits = model.batch_logits(cur, prev).float()
            nll = F.cross_entropy(logits.reshape(-1, layout.vocab_size), cur.reshape(-1), reduction="none")
            bits = (nll / LN2).double().cpu().view(cur.shape[0], D, hw)
            sums[0] += bits.sum()
            if kind == "intra":
                sums[1] += bits.sum()
                sums[2] += bits.numel()
            else:
                sums[3] += bits.numel()
            sums[4:] += bits.sum(dim=(0, 2))
            n_tok += bits.numel()
    sums = dist.all_reduce_sum(sums.to(device)).cpu() if dist.world_size() > 1 else sums
    total_tokens = float(sums[2] + sums[3])
    if total_tokens == 0:
        return {}
    frames = total_tokens / layout.numel
    log2k = math.log2(layout.vocab_size)
    out = {"bits_per_token": float(sums[0]) / total_tokens,
           "bits_per_token_ratio": float(sums[0]) / total_tokens / log2k,
           "bits_per_pixel": float(sums[0]) / (frames * tokens.pixels_per_frame),
           "decode_passes_per_frame": float(model.passes_per_frame(layout)),
           "frames": frames}
    if sums[2] > 0:
        out["bits_per_token_intra"] = float(sums[1] / sums[2])
    if sums[3] > 0:
        out["bits_per_token_inter"] = float((sums[0] - sums[1]) / sums[3])
    if D > 1:
        for d in range(D):
            out[f"bits_per_token_depth{d}"] = float(sums[4 + d]) / (total_tokens / D)
    return out


@torch.no_grad()
def measure_coded(model: TrainableEntropyModel, tokens: TokenSet, intra_period: int, device) -> dict[str, float]:
    """The coder's rate (`codec.coded_bits`, adaptive mixing, teacher-forced logits) on every whole validation clip
    (this rank's share, all-reduced): coded bits per token, its ratio to log2 K, per depth, bits per pixel."""
    from ..codec.coder import coded_bits

    layout = tokens.layout
    D = layout.depth
    sums = torch.zeros(2 + D, dtype=torch.float64)  # bits, tokens, per-depth bits
    for clip in tokens.clips[dist.rank()::dist.world_size()]:
        cost = coded_bits(clip, model, layout.vocab_size, intra_period=intra_period, adaptive=True,
                          teacher_forced=True)
        sums[0] += float(cost.sum())
        sums[1] += clip.numel()
        sums[2:] += torch.from_numpy(cost.sum(axis=0))
    sums = dist.all_reduce_sum(sums.to(device)).cpu() if dist.world_size() > 1 else sums
    if sums[1] == 0:
        return {}
    n = float(sums[1])
    out = {"coded_bits_per_token": float(sums[0]) / n,
           "coded_bits_per_token_ratio": float(sums[0]) / n / math.log2(layout.vocab_size),
           "coded_bits_per_pixel": float(sums[0]) / (n / layout.numel * tokens.pixels_per_frame)}
    if D > 1:
        for d in range(D):
            out[f"coded_bits_per_token_depth{d}"] = float(sums[2 + d]) / (n / D)
    return out


class EntropyTrainer:
    def __init__(self, cfg: EntropyConfig, run_dir: Path, *, resume: str | None = None, warnings: list[str] = (),
                 later: dict | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        later = later or {}
        device_name = cfg.train.device
        if later.get("device_fallback") and device_name.startswith("cuda") and not torch.cuda.is_available():
            warnings = list(warnings) + [f"device {device_name!r}: CUDA is not available; training on the CPU"]
            device_name = "cpu"
        self.device = resolve_device(device_name)
        self.main = dist.is_main()
        self.logger = RunLogger(run_dir, LogConfig(every=cfg.log.every, tensorboard=cfg.log.tensorboard,
                                                   progress=cfg.log.progress, wandb=False),
                                enabled=self.main, total_steps=0, run_name=run_dir.name)
        for w in warnings:
            self.logger.info(f"warning: {w}")
        seed_everything(cfg.train.seed)

        tok = load_tokenizer(cfg.tokenizer, self.device)
        self.tokenizer = tok
        from ..eval.evaluator import codebook_sizes

        check_vocab(cfg, codebook_sizes(tok.model))  # before tokenizing anything
        cache = Path(cfg.tokenizer.cache_dir) if cfg.tokenizer.cache_dir else run_dir / "tokens"
        self.train_tokens = cached_tokens(tok, cfg.data.train, "data.train", cache, "train", self.logger.info)
        self.val_tokens = (cached_tokens(tok, cfg.data.val, "data.val", cache, "val", self.logger.info)
                           if cfg.data.val else None)
        layout = self.train_tokens.layout
        if self.val_tokens is not None and self.val_tokens.layout != layout:
            raise TrainingError(f"validation tokens have layout {self.val_tokens.layout}, training tokens {layout}")
        self.layout = layout
        self.train_windows = windows(self.train_tokens.clips, cfg.data.sequence_length, cfg.data.train_num_samples)
        self.val_windows = (windows(self.val_tokens.clips, cfg.data.sequence_length, cfg.data.val_num_samples)
                            if self.val_tokens is not None else [])
        world = dist.world_size()
        self.num_steps = total_steps(cfg, len(self.train_windows), world)
        per_epoch = max(1, math.ceil(len(self.train_windows) / (cfg.train.batch_size * cfg.train.grad_accum_steps * world)))
        self.val_start = cfg.train.val_start_step
        if "val_start_epoch" in later:  # the previous system: validate from this (1-based) epoch on
            self.val_start = max(0, (int(later["val_start_epoch"]) - 1) * per_epoch)
        self.logger.total_steps = self.num_steps

        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        self.model = build_model(cfg, layout).to(self.device)
        self.net = self.model
        if dist.is_initialized():
            from torch.nn.parallel import DistributedDataParallel as DDP

            # an intra-only batch leaves the previous-frame embedding unused (and an inter-only one the intra vector)
            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids, find_unused_parameters=True)
        t = cfg.train
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.stream = WindowStream(len(self.train_windows), t.batch_size, t.seed, dist.rank(), world)
        self.step = 0
        self.skipped = 0
        self.last_val: dict[str, float] = {}
        self.ckpt = Checkpointer(run_dir, keep_last=t.keep_last, best_metric="bits_per_token", enabled=self.main)
        torch.manual_seed(t.seed + 1000 * dist.rank())  # each rank its own training randomness
        if resume:
            self._resume(resume)
        self.meta = {"tokenizer_hash": tok.hash, "tokenizer": tok.source,
                     "layout": {"depth": layout.depth, "height": layout.height, "width": layout.width,
                                "vocab_size": layout.vocab_size},
                     "pixels_per_frame": self.train_tokens.pixels_per_frame, "entropy_config": to_dict(cfg)}
        if self.main:
            (run_dir / "entropy_config.json").write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
            n_par = sum(p.numel() for p in self.model.parameters())
            self.logger.info(
                f"entropy model {self.model.name}: {n_par / 1e6:.2f}M parameters; tokens {layout.depth}x"
                f"{layout.height}x{layout.width} per frame from {layout.vocab_size} codes (log2 K = "
                f"{math.log2(layout.vocab_size):.3f}); {len(self.train_windows)} training / {len(self.val_windows)} "
                f"validation windows of <= {cfg.data.sequence_length} frames; {self.num_steps} steps; "
                f"{self.model.passes_per_frame(layout)} decode passes per frame; device {self.device}, "
                f"{world} process(es)")

    # ------------------------------------------------------------------------------------------------------------
    def _resume(self, source: str) -> None:
        from ..models.pretrained import load_safetensors, load_state_dict_strict

        ck = resolve_checkpoint(source)
        saved = json.loads((ck / "config.json").read_text())
        if saved.get("name") != self.model.name or saved.get("config") != self.model.model_config():
            raise CheckpointError(f"{ck}: holds a {saved.get('name')} entropy model with {saved.get('config')}, this "
                                  f"run builds {self.model.name} with {self.model.model_config()}\n  fix: resume with "
                                  "the config the run was started with")
        if saved.get("tokenizer_hash") != self.tokenizer.hash:
            raise CheckpointError(f"{ck}: was trained on tokens of another tokenizer\n  fix: resume with the same "
                                  "tokenizer, or start a new run")
        load_state_dict_strict(self.model, load_safetensors(ck / "model.safetensors", self.device), str(ck))
        st = load_tree(ck, "training_state")
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.skipped = int(st["skipped"])
        self.stream.load_state_dict(st["data"])
        self.last_val = st.get("last_val", {})
        per_rank = st.get("rng_per_rank")
        set_rng_state(per_rank[dist.rank()] if per_rank and len(per_rank) == dist.world_size() else st["rng"])
        self.logger.info(f"resumed from {ck} at step {self.step}")

    def _save(self, metric: float | None) -> None:
        state = {"opt": self.opt.state_dict(), "step": self.step, "skipped": self.skipped, "rng": rng_state(),
                 "data": self.stream.state_dict(), "last_val": self.last_val}
        if dist.world_size() > 1:
            state["rng_per_rank"] = dist.all_gather_object(state["rng"])
        if self.main:
            meta = {"name": self.model.name, "config": self.model.model_config(), **self.meta}
            self.ckpt.save(self.step, config_json=json.dumps(meta, indent=2, sort_keys=True) + "\n",
                           model=self.model.state_dict(), training_state=state, metric=metric)
        dist.barrier()

    def _set_lr(self) -> float:
        t = self.cfg.train
        lr = t.lr * lr_factor(self.step, self.num_steps, t.warmup_steps, t.lr_schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _loss(self, idx: list[int]) -> tuple[torch.Tensor, int]:
        wins = [self.train_windows[i] for i in idx]
        intra, pairs = frames_of(self.train_tokens, wins, self.device)
        ac = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.precision == "bf16")
        with ac:
            nll = self.net(intra, None if pairs is None else pairs[0], None if pairs is None else pairs[1])
        return nll.float().sum() / LN2, nll.numel()

    def train_step(self) -> dict[str, float]:
        lr = self._set_lr()
        self.opt.zero_grad(set_to_none=True)
        ga = self.cfg.train.grad_accum_steps
        batches = [self.stream.next() for _ in range(ga)]
        counts = [sum(self._count(i) for i in b) for b in batches]
        total = dist.all_reduce_sum(torch.tensor(float(sum(counts)), device=self.device)).item() \
            if dist.world_size() > 1 else float(sum(counts))
        bits_sum, predicted = 0.0, 0
        for k, b in enumerate(batches):
            ctx = self.net.no_sync() if (k < ga - 1 and hasattr(self.net, "no_sync")) else _null()
            with ctx:
                bits, n = self._loss(b)
                # mean over every predicted token of the global batch; DDP averages gradients over ranks
                (bits * dist.world_size() / total).backward()
            bits_sum += float(bits.detach())
            predicted += n
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                            self.cfg.train.grad_clip if self.cfg.train.grad_clip else float("inf"))
        finite = dist.all_true(bool(torch.isfinite(gn)) and math.isfinite(bits_sum), self.device)
        if finite:
            self.opt.step()
        else:
            self.skipped += 1
        self.step += 1
        mine = bits_sum / max(1, predicted)
        return {"bits_per_token": mine, "grad_norm": float(gn), "lr": lr, "finite": float(finite)}

    def _count(self, i: int) -> int:
        """The loss is normalised by the frame tokens of the global batch (known before the forward and the same
        on every rank; masked_groups predicts a random share of them per step)."""
        return self.train_windows[i][2] * self.layout.numel

    def validate(self) -> dict[str, float]:
        if not self.val_windows:
            return {}
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = measure(self.model, self.val_tokens, self.val_windows, self.device)
            if self.cfg.train.validation_coded:
                metrics.update(measure_coded(self.model, self.val_tokens, self.cfg.train.validation_intra_period,
                                             self.device))
        self.model.train()
        self.last_val = metrics
        self.logger.scalars(self.step, metrics, "val")
        self.logger.line(self.step, metrics, "val")
        return metrics

    def fit(self) -> dict[str, float]:
        t = self.cfg.train
        self.model.train()
        self.logger.start_progress(self.step)
        tp = Throughput()
        window, n = {}, 0
        t0 = time.perf_counter()
        bad = 0
        while self.step < self.num_steps:
            r = self.train_step()
            tp.add(t.batch_size)
            bad = 0 if r["finite"] else bad + 1
            if bad >= 10:
                raise TrainingError(f"10 non-finite steps in a row at step {self.step}; lower train.lr or set "
                                    "train.grad_clip, then resume from the last checkpoint")
            if r["finite"]:
                for k in ("bits_per_token", "grad_norm", "lr"):
                    window[k] = window.get(k, 0.0) + r[k]
                n += 1
            steps_s, _ = tp.rates()
            self.logger.progress(self.step, {"bits": r["bits_per_token"], "it/s": steps_s})
            if n and (self.step % self.cfg.log.every == 0 or self.step == self.num_steps):
                avg = dist.all_reduce_mean_dict({k: v / n for k, v in window.items()}, self.device)
                avg.update(steps_per_s=steps_s, skipped_steps=float(self.skipped))
                self.logger.scalars(self.step, avg, "train")
                self.logger.line(self.step, avg, "train")
                window, n = {}, 0
                tp.reset()
            metric = None
            if self.val_windows and self.step >= self.val_start and (
                    self.step % t.validation_interval == 0 or self.step == self.num_steps):
                metric = self.validate().get("bits_per_token")
            if self.step % t.save_interval == 0 or self.step == self.num_steps:
                self._save(metric)
        self.logger.info(f"finished {self.step} steps in {time.perf_counter() - t0:.1f}s")
        return self.last_val

    def export(self) -> Path:
        return save_entropy_model(self.model, self.run_dir / "model", extra=self.meta)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


__all__ = ["EntropyTrainer", "build_model", "measure", "lr_factor", "WindowStream"]
