"""One torchrun worker for tests/test_distributed.py: `vqforge train` with optional probes, then exit with its code.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py [--dump DIR]
        [--fail-rank R --fail-step S [--fail-mode raise|hang]] -- train CONFIG --out RUN ...

--dump DIR      after `Trainer.fit` returns, each rank writes DIR/rank<r>.pt: its model, discriminator and weight-EMA
                tensors, its counters and its data-stream position (what the tests compare across ranks and runs).
--fail-rank R   on rank R, `Trainer.train_step` fails at step S: "raise" raises RuntimeError, "hang" sleeps (never
                entering the next collective), which the other ranks' train.dist_timeout_s must end.
--nan-rank R    on rank R only, the generator loss of step --nan-step gets NaN added (its gradient stays finite, so
                only the replicas' joint skip decision keeps the other rank from stepping).
Everything after "--" goes to `vqforge.cli.main` unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser()
    p.add_argument("--dump", default=None)
    p.add_argument("--fail-rank", type=int, default=None)
    p.add_argument("--fail-step", type=int, default=2)
    p.add_argument("--fail-mode", choices=("raise", "hang"), default="raise")
    p.add_argument("--nan-rank", type=int, default=None)
    p.add_argument("--nan-step", type=int, default=2)
    opts = p.parse_args(argv[:split])
    cli_args = argv[split + 1:]

    torch.set_num_threads(1)
    from vqforge.cli import main as cli_main
    from vqforge.train.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))

    if opts.fail_rank is not None and rank == opts.fail_rank:
        real_step = Trainer.train_step

        def failing_step(self):
            if self.counters.step == opts.fail_step:
                if opts.fail_mode == "hang":
                    time.sleep(3600)
                raise RuntimeError(f"injected failure at step {self.counters.step}")
            return real_step(self)

        Trainer.train_step = failing_step

    if opts.nan_rank is not None and rank == opts.nan_rank:
        from vqforge.losses.objective import VQGANObjective

        real_loss = VQGANObjective.generator_loss

        def nan_loss(self, x, out, step, *args, **kwargs):
            res = real_loss(self, x, out, step, *args, **kwargs)
            if step == opts.nan_step:
                res.total = res.total + float("nan")
            return res

        VQGANObjective.generator_loss = nan_loss

    if opts.dump is not None:
        real_fit = Trainer.fit

        def fit_and_dump(self):
            metrics = real_fit(self)
            state = {f"model.{k}": v for k, v in self.raw_model.state_dict().items()}
            if self.discriminator is not None:
                disc = getattr(self.discriminator, "module", self.discriminator)
                state.update({f"disc.{k}": v for k, v in disc.state_dict().items()})
            if self.ema is not None:
                state.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            state = {k: v.detach().cpu().clone() for k, v in state.items()}
            Path(opts.dump).mkdir(parents=True, exist_ok=True)
            torch.save({"tensors": state, "counters": asdict(self.counters), "data": self.stream.state_dict(),
                        "ddp": type(self.model).__name__}, Path(opts.dump) / f"rank{rank}.pt")
            return metrics

        Trainer.fit = fit_and_dump

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
