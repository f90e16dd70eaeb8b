"""Run logging: console + text file, JSONL metrics, TensorBoard, optional wandb, progress bar. Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config.schema import LogConfig


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows of `path` with step <= last_step (atomically): a resumed run logs the later steps again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue  # a torn last line of a crashed run
        if isinstance(step, int) and step <= last_step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(row + "\n" for row in kept))
    os.replace(tmp, path)


def _fmt(v: float) -> str:
    if v == 0 or (1e-3 <= abs(v) < 1e4):
        return f"{v:.4f}"
    return f"{v:.3e}"


class RunLogger:
    """Writes what the trainer reports. Non-main ranks get a logger that writes nothing."""

    def __init__(self, run_dir: Path | None, cfg: LogConfig, *, enabled: bool = True, total_steps: int = 0,
                 run_name: str = "vqforge", config_dict: dict | None = None, resume_step: int | None = None):
        """`resume_step`: the run continues after this many completed steps; rows logged for later steps by the
        earlier attempt are dropped (metrics.jsonl rewritten, TensorBoard purged), and wandb continues the same run."""
        self.enabled = enabled and run_dir is not None
        self.cfg = cfg
        self.run_dir = run_dir
        self.total_steps = total_steps
        self._log = logging.getLogger(f"vqforge.run.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self._tb = None
        self._wandb = None
        self._jsonl = None
        self._bar = None
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self._log.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        self._log.addHandler(sh)
        if resume_step is not None:
            _truncate_jsonl(run_dir / "metrics.jsonl", resume_step)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at steps > resume_step from the earlier attempt are hidden, not shown twice
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                self.info("log.wandb is true but wandb is not installed (pip install wandb); continuing without it")
            else:
                # one wandb run per vqforge run: its id is kept in the run directory and reused on resume
                id_file = run_dir / "wandb_run_id"
                run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
                id_file.write_text(run_id + "\n")
                self._wandb = wandb.init(project=cfg.project, name=run_name, config=config_dict, dir=str(run_dir),
                                         id=run_id, resume="allow")

    # -- text ---------------------------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.clear()
        self._log.info(msg)
        if self._bar is not None:
            self._bar.refresh()

    # -- progress -----------------------------------------------------------------------------------------------
    def start_progress(self, initial: int) -> None:
        if not (self.enabled and self.cfg.progress):
            return
        from tqdm import tqdm

        self._bar = tqdm(total=self.total_steps, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                         mininterval=1.0)

    def progress(self, step: int, postfix: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(0)

    # -- metrics ------------------------------------------------------------------------------------------------
    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in clean.items()}, step=step)

    def line(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        self.info(f"[{prefix}] step {step}: " + " ".join(f"{k} {_fmt(v)}" for k, v in values.items()))

    def image(self, step: int, tag: str, grid: np.ndarray) -> Path | None:
        """grid: (H, W, 3) uint8. Written as PNG in the run dir and to TensorBoard."""
        if not self.enabled:
            return None
        from PIL import Image

        out = self.run_dir / "images" / f"{tag}_{step:08d}.png"
        out.parent.mkdir(exist_ok=True)
        Image.fromarray(grid).save(out)
        if self._tb is not None:
            self._tb.add_image(tag, grid, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(grid)}, step=step)
        return out

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
        for h in list(self._log.handlers):
            h.close()
            self._log.removeHandler(h)


class Throughput:
    """Steps/s and images/s over the recent window."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.images = 0

    def add(self, images: int) -> None:
        self.steps += 1
        self.images += images

    def rates(self) -> tuple[float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return self.steps / dt, self.images / dt

    def reset(self) -> None:
        self.__init__()
