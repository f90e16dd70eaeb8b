"""`vqforge entropy train CONFIG` and `vqforge entropy eval ENTROPY_MODEL --data ...`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .. import distributed as dist
from ..errors import CheckpointError, ConfigError


def add_parser(sub) -> None:
    sp = sub.add_parser("entropy", help="train or evaluate an entropy model over a tokenizer's tokens")
    esub = sp.add_subparsers(dest="entropy_command", required=True)
    t = esub.add_parser("train", help="tokenize the data once (cached), then train an entropy model")
    t.add_argument("config", help="native YAML/JSON, or the previous system's transformer_config.json")
    t.add_argument("--out", default=None, help="run directory (default: train.out_dir or runs/<config name>)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR|CKPT", help="continue a run at its exact step")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a native key of the entropy config, e.g. --set train.lr=1e-4")
    e = esub.add_parser("eval", help="exact coding cost of videos/images under a trained entropy model")
    e.add_argument("model", metavar="ENTROPY_MODEL", help="the run directory `vqforge entropy train` wrote, or its model/")
    e.add_argument("--data", required=True, nargs="+", help="videos/images: files, folders or globs")
    e.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one the model was trained on)")
    e.add_argument("--sequence-length", type=int, default=None,
                   help="frames between intra frames (default: the training data.sequence_length)")
    e.add_argument("--intra-period", type=int, default=32,
                   help="segment length for the coded_* rate (whole clips as `vqforge compress` codes them, adaptive "
                   "mixing); 0 = skip it")
    e.add_argument("--time-frames", type=int, default=1,
                   help="time step-by-step decoding (what a decoder runs) on this many frames; 0 = skip")
    e.add_argument("--json", default=None, help="also write the metrics here")


def entropy_main(args) -> int:
    if args.entropy_command == "train":
        return train_main(args)
    return eval_main(args)


def train_main(args) -> int:
    from .config import load_entropy_config

    cfg, warns, later = load_entropy_config(args.config, args.overrides)
    resume = args.resume or cfg.train.resume
    with dist.command_scope(cfg.train.dist_timeout_s, cfg.train.device):  # setup/teardown: no-ops without torchrun
        from .trainer import EntropyTrainer

        from ..train.command import default_run_dir, fit_and_report  # run dir: --out, else train.out_dir, else runs/<name>

        run_dir = default_run_dir(cfg, args.config, args.out)
        if not resume and (run_dir / "checkpoints" / "latest").exists():
            raise CheckpointError(f"{run_dir} already holds an entropy training run; continue it with --resume "
                                  f"{run_dir}, or train into another directory with --out")
        tr = EntropyTrainer(cfg, run_dir, resume=resume, warnings=warns, later=later)

        def export() -> list[str]:
            return [f"run directory: {run_dir}", f"  entropy model (for the codec / load_entropy_model): {tr.export()}"]

        fit_and_report(tr.fit, tr.logger, export)
    return 0


@torch.no_grad()
def time_step_decode(model, frames: list[tuple[torch.Tensor, torch.Tensor | None]], layout) -> float:
    """Seconds per frame of the decoder's work: every coding step's `step_logits`, revealing the step's tokens."""
    t0 = time.perf_counter()
    for cur, prev in frames:
        known = torch.zeros(layout.numel, dtype=torch.bool)
        work = torch.zeros_like(cur).reshape(-1)
        flat = cur.reshape(-1)
        for i, pos in enumerate(model.schedule(layout)):
            model.step_logits(work.view(cur.shape), known.view(cur.shape), prev, layout, i)
            work[pos] = flat[pos]
            known[pos] = True
    return (time.perf_counter() - t0) / max(1, len(frames))


def eval_main(args) -> int:
    from .base import load_entropy_model
    from .config import EntropyTokenizerConfig
    from .tokens import cached_tokens, load_tokenizer, windows
    from .trainer import measure, measure_coded

    if args.intra_period < 0:
        raise ConfigError("--intra-period", f"must be >= 0, got {args.intra_period}",
                          "use e.g. 32 (0 skips the coded rate)")
    model, meta = load_entropy_model(args.model)
    tok_path = args.tokenizer or meta.get("tokenizer")
    if not tok_path or not Path(tok_path).exists():
        raise ConfigError("--tokenizer", f"the tokenizer the model was trained with ({tok_path!r}) is not available",
                          "pass --tokenizer DIR")
    ec = meta.get("entropy_config", {})
    tcfg = EntropyTokenizerConfig(path=tok_path, resolution=ec.get("tokenizer", {}).get("resolution"),
                                  ema=ec.get("tokenizer", {}).get("ema", False))
    tok = load_tokenizer(tcfg)
    if meta.get("tokenizer_hash") and meta["tokenizer_hash"] != tok.hash:
        raise CheckpointError(f"{args.model}: was trained on tokens of another tokenizer than {tok_path}\n"
                              "  fix: pass the tokenizer it was trained with (--tokenizer)")
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        tokens = cached_tokens(tok, args.data, "--data", Path(cache), "eval", log=lambda m: None)
    seq = args.sequence_length or ec.get("data", {}).get("sequence_length", 4)
    wins = windows(tokens.clips, seq)
    m = measure(model, tokens, wins, torch.device("cpu"))
    if args.intra_period:
        m.update(measure_coded(model, tokens, args.intra_period, torch.device("cpu")))
    if args.time_frames:
        frames = []
        for c, s, t in wins:
            for f in range(s, s + t):
                frames.append((tokens.clips[c][f], None if f == s else tokens.clips[c][f - 1]))
        m["decode_seconds_per_frame"] = time_step_decode(model, frames[:args.time_frames], tokens.layout)
    m["log2_K"] = math.log2(tokens.layout.vocab_size)
    print(json.dumps(m, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2) + "\n")
    return 0
