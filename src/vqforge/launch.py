"""`vqforge launch MAP.json`: several training tasks, each on its own GPU, from the user's multitask map file.

The map is the previous system's `multitask/config.json`: a JSON object `{"<task config>": <gpu index>}`. Paths are
relative to the map file's folder; a GPU index of -1 skips the task. Every other task runs as its own
`vqforge train <task config>` process with `CUDA_VISIBLE_DEVICES=<index>` and `--set train.device=cuda`, so the process
sees exactly one GPU (its GPU 0) and nothing it builds can land on another task's card.

Before anything starts, every task config is loaded and checked, each GPU index must exist on this machine, and no
two tasks may write the same run directory; any problem is an error naming the task and the fix. Then the launcher
shows a status table (task, GPU, step, loss, state), refreshed from each task's `metrics.jsonl`, writes one log per
task under the launch directory (`--out`, default `<map folder>/launch-<time>/`), and ends with a summary
(also written to `summary.json` there). One task failing does not stop the others; the exit status is 1 if any
failed. Ctrl-C (SIGINT) stops every task: SIGINT to each task's process group, then SIGTERM, then SIGKILL for what
is still running after a grace period; the summary says which tasks were stopped.

`--cpu` runs the tasks on the CPU one after another (GPU indices are then only labels); the tests run it this way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from .errors import ConfigError, VQForgeError

STOP_GRACE_S = 20.0  # after SIGINT, before SIGTERM; the same again before SIGKILL


class LaunchError(VQForgeError):
    """The map file or one of its tasks cannot be launched; nothing was started."""


@dataclass
class Task:
    name: str  # the key in the map file
    config: Path
    gpu: int  # -1: skipped
    run_dir: Path | None = None
    log: Path | None = None
    state: str = "pending"  # pending | running | done | failed | skipped | stopped | not started
    returncode: int | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    error: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    metrics_offset: int = 0
    started: float | None = None
    ended: float | None = None


def read_map(map_path: Path) -> list[Task]:
    """The tasks of a multitask map file, in file order."""
    from .config.jsonc import loads_jsonc

    if not map_path.is_file():
        raise LaunchError(f"{map_path}: no such file\n  fix: give the multitask map, e.g. multitask/config.json "
                          '({"task1.json": 0, "task2.json": -1})')
    try:
        raw = loads_jsonc(map_path.read_text(encoding="utf-8"), str(map_path))
    except ConfigError as e:
        raise LaunchError(f"{e}\n  (a map file is {{\"task1.json\": 0, \"task2.json\": -1, ...}})") from None
    if not isinstance(raw, dict) or not raw:
        raise LaunchError(f"{map_path}: expected a JSON object {{\"<task config>\": <gpu index>}}, got "
                          f"{type(raw).__name__ if raw else 'an empty object'}\n"
                          '  fix: map each task config to a GPU index, e.g. {"task1.json": 0, "task2.json": -1}')
    tasks = []
    for name, gpu in raw.items():
        if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < -1:
            raise LaunchError(f"{map_path}: task {name!r}: GPU index {gpu!r} is not an integer >= -1\n"
                              "  fix: use the GPU's index (0, 1, ...) or -1 to skip the task")
        path = Path(name)
        tasks.append(Task(name=name, config=path if path.is_absolute() else map_path.parent / path, gpu=gpu))
    return tasks


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def prepare(tasks: list[Task], *, cpu: bool, overrides: list[str], gpu_count: int | None = None) -> None:
    """Check everything that can be checked before a process starts; fill in each task's run directory."""
    from .config import load_config_with_warnings
    from .train.command import default_run_dir

    active = [t for t in tasks if t.gpu >= 0]
    for t in tasks:
        if t.gpu < 0:
            t.state = "skipped"
    if not active:
        raise LaunchError("every task in the map has GPU index -1 (skipped); nothing to launch\n"
                          "  fix: give at least one task a GPU index")
    if not cpu:
        n = _gpu_count() if gpu_count is None else gpu_count
        bad = [t for t in active if t.gpu >= n]
        if bad:
            have = f"GPUs 0..{n - 1}" if n else "no GPU"
            raise LaunchError(
                "; ".join(f"task {t.name!r} asks for GPU {t.gpu}" for t in bad) + f", but this machine has {have}\n"
                f"  fix: change the index in the map (-1 skips a task), or run the tasks on the CPU with --cpu"
            )
    runs: dict[Path, str] = {}
    for t in active:
        if not t.config.is_file():
            raise LaunchError(f"task {t.name!r}: {t.config} does not exist\n  fix: the map's paths are relative to "
                              "the map file's folder; correct the name or set the task to -1")
        try:
            cfg, _ = load_config_with_warnings(t.config, overrides)  # its own log reports the warnings
        except VQForgeError as e:
            raise LaunchError(f"task {t.name!r} ({t.config}): {e}") from None
        t.run_dir = default_run_dir(cfg, str(t.config), None).resolve()
        t.total_steps = cfg.train.num_steps
        if t.run_dir in runs:
            raise LaunchError(f"tasks {runs[t.run_dir]!r} and {t.name!r} would both train into {t.run_dir}\n"
                              "  fix: give one of them another train.out_dir (or folder_name)")
        runs[t.run_dir] = t.name


def _command(t: Task, cpu: bool, overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "vqforge", "train", str(t.config)]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ)
    if cpu:
        cmd += ["--set", "train.device=cpu"]
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        cmd += ["--set", "train.device=cuda"]
        env["CUDA_VISIBLE_DEVICES"] = str(t.gpu)
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as the previous launcher set it
    return cmd, env


def _start(t: Task, launch_dir: Path, cpu: bool, overrides: list[str]) -> None:
    cmd, env = _command(t, cpu, overrides)
    t.log = launch_dir / f"{Path(t.name).stem}.log"
    metrics = t.run_dir / "metrics.jsonl"
    t.metrics_offset = metrics.stat().st_size if metrics.is_file() else 0  # only what this launch writes
    with open(t.log, "w", encoding="utf-8") as fh:
        fh.write(f"# {' '.join(cmd)}\n# CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r}\n")
        fh.flush()
        # its own session: a Ctrl-C in the terminal reaches the launcher only, which then stops each task's group
        t.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                  stdin=subprocess.DEVNULL, preexec_fn=_interruptible)
    t.state = "running"
    t.started = time.time()


def _refresh(t: Task) -> None:
    """Step and loss from the task's metrics.jsonl (lines written since it started)."""
    if t.run_dir is None:
        return
    f = t.run_dir / "metrics.jsonl"
    try:
        with open(f, "rb") as fh:
            fh.seek(t.metrics_offset)
            data = fh.read()
    except OSError:
        return
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if rec.get("split") == "train":
            t.step = int(rec.get("step", 0))
            loss = rec.get("total_loss")
            t.loss = float(loss) if isinstance(loss, (int, float)) else None
            return


def _last_error(log: Path | None) -> str:
    if log is None or not log.is_file():
        return ""
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error" in ln.split(":", 1)[0]:
            return ln
    return lines[-1] if lines else ""


def _poll(t: Task) -> bool:
    """Update a running task; True when it has just ended."""
    if t.proc is None or t.state != "running":
        return False
    _refresh(t)
    rc = t.proc.poll()
    if rc is None:
        return False
    t.returncode = rc
    t.ended = time.time()
    t.state = "done" if rc == 0 else "failed"
    if rc != 0:
        t.error = _last_error(t.log)
    return True


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def status_table(tasks: list[Task], cpu: bool) -> str:
    head = ["task", "GPU", "step", "loss", "state"]
    rows = []
    for t in tasks:
        gpu = "-" if t.gpu < 0 else (f"cpu ({t.gpu})" if cpu else str(t.gpu))
        step = "" if t.step is None else (f"{t.step}/{t.total_steps}" if t.total_steps else str(t.step))
        loss = "" if t.loss is None else f"{t.loss:.4g}"
        state = t.state + (f" (exit {t.returncode})" if t.state == "failed" else "")
        rows.append([t.name, gpu, step, loss, state])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(_fmt_row(r, widths) for r in [head, *rows])


class _Display:
    """Redraws the table in place on a terminal; elsewhere (a log file, nohup) prints it when a task changes state
    and otherwise at most every `quiet_s` seconds, so the log shows progress without a line per refresh."""

    def __init__(self, out: IO[str], cpu: bool, quiet_s: float = 60.0):
        self.out = out
        self.cpu = cpu
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.lines = 0
        self.last = ""
        self.quiet_s = quiet_s
        self.printed = 0.0

    def show(self, tasks: list[Task], changed: bool) -> None:
        table = status_table(tasks, self.cpu)
        if self.tty:
            if self.lines:
                self.out.write(f"\x1b[{self.lines}F\x1b[J")  # back to the table's first line, clear below
            self.out.write(table + "\n")
            self.lines = table.count("\n") + 1
        elif table != self.last and (changed or time.time() - self.printed >= self.quiet_s):
            self.out.write(table + "\n\n")
            self.printed = time.time()
        self.last = table
        self.out.flush()


def _stop_all(tasks: list[Task], grace: float, out: IO[str]) -> None:
    running = [t for t in tasks if t.state == "running" and t.proc is not None and t.proc.poll() is None]
    if running:
        out.write(f"stopping {len(running)} task(s): " + ", ".join(t.name for t in running) + "\n")
        out.flush()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        alive = [t for t in running if t.proc.poll() is None]
        if not alive:
            break
        for t in alive:
            try:
                os.killpg(t.proc.pid, sig)  # the task's process group: its data-loader workers too
            except ProcessLookupError:
                pass
        deadline = time.time() + (grace if sig != signal.SIGKILL else 5.0)
        while time.time() < deadline and any(t.proc.poll() is None for t in alive):
            time.sleep(0.1)
    for t in running:
        t.proc.wait()
        _refresh(t)
        t.returncode = t.proc.returncode
        t.ended = time.time()
        t.state = "stopped"
    for t in tasks:
        if t.state == "pending":
            t.state = "not started"


def run_tasks(tasks: list[Task], launch_dir: Path, *, cpu: bool, overrides: list[str], out: IO[str],
              refresh_s: float = 2.0, grace_s: float = STOP_GRACE_S,
              sleep: Callable[[float], None] = time.sleep) -> bool:
    """Run the prepared tasks (all at once on GPUs, one after another with cpu); False if interrupted."""
    display = _Display(out, cpu)
    active = [t for t in tasks if t.state == "pending"]
    try:
        if not cpu:
            for t in active:
                _start(t, launch_dir, cpu, overrides)
        display.show(tasks, True)
        queue = list(active) if cpu else []
        current: Task | None = None
        while True:
            changed = False
            if cpu and current is None and queue:
                current = queue.pop(0)
                _start(current, launch_dir, cpu, overrides)
                changed = True
            for t in active:
                if _poll(t):
                    changed = True
                    if t is current:
                        current = None
            display.show(tasks, changed)
            if all(t.state not in ("pending", "running") for t in active):
                return True
            if not (cpu and current is None and queue):
                sleep(refresh_s)
    except KeyboardInterrupt:
        out.write("\ninterrupted (Ctrl-C)\n")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the tasks
        try:
            _stop_all(tasks, grace_s, out)
        finally:
            signal.signal(signal.SIGINT, previous)
        display.show(tasks, True)
        return False


def summary(tasks: list[Task], cpu: bool, interrupted: bool) -> tuple[str, dict]:
    lines = ["summary:"]
    record = {"interrupted": interrupted, "tasks": []}
    for t in tasks:
        took = f" in {t.ended - t.started:.0f}s" if t.started and t.ended else ""
        where = "skipped (GPU -1)" if t.state == "skipped" else ("cpu" if cpu else f"GPU {t.gpu}")
        line = f"  {t.name}: {t.state}"
        if t.state == "done":
            line += f"{took}; run directory {t.run_dir}"
        elif t.state == "failed":
            line += f" (exit {t.returncode}){took}: {t.error or 'see its log'}; log {t.log}"
        elif t.state == "stopped":
            line += f" at step {t.step if t.step is not None else 0}; the last checkpoint is in {t.run_dir}/checkpoints"
        if t.state != "skipped":
            line += f" [{where}]"
        lines.append(line)
        record["tasks"].append({"task": t.name, "config": str(t.config), "gpu": t.gpu, "state": t.state,
                                "pid": t.proc.pid if t.proc is not None else None,
                                "returncode": t.returncode, "step": t.step, "loss": t.loss,
                                "run_dir": str(t.run_dir) if t.run_dir else None,
                                "log": str(t.log) if t.log else None, "error": t.error})
    counts = {s: sum(t.state == s for t in tasks) for s in ("done", "failed", "stopped", "skipped", "not started")}
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines), record


def launch(map_path: str | Path, *, out: str | Path | None = None, cpu: bool = False, overrides: list[str] = (),
           stream: IO[str] | None = None, refresh_s: float = 2.0, gpu_count: int | None = None,
           grace_s: float = STOP_GRACE_S) -> int:
    """Launch every task of a map file; returns the exit status (0 all done, 1 a task failed, 130 interrupted)."""
    stream = stream or sys.stdout
    map_path = Path(map_path)
    overrides = list(overrides)
    tasks = read_map(map_path)
    prepare(tasks, cpu=cpu, overrides=overrides, gpu_count=gpu_count)
    launch_dir = Path(out) if out else map_path.parent / time.strftime("launch-%Y%m%d-%H%M%S")
    launch_dir.mkdir(parents=True, exist_ok=True)
    mode = "on the CPU, one after another" if cpu else "in parallel, one process per GPU"
    stream.write(f"launching {sum(t.state == 'pending' for t in tasks)} task(s) from {map_path} {mode}; "
                 f"logs in {launch_dir}\n")
    completed = run_tasks(tasks, launch_dir, cpu=cpu, overrides=overrides, out=stream, refresh_s=refresh_s,
                          grace_s=grace_s)
    text, record = summary(tasks, cpu, not completed)
    (launch_dir / "summary.json").write_text(json.dumps(record, indent=2))
    stream.write(text + "\n")
    stream.flush()
    if not completed:
        return 130
    return 1 if any(t.state == "failed" for t in tasks) else 0


def _interruptible() -> None:
    """SIGINT back to its default in a task: a launcher started in the background of a script inherits SIGINT
    ignored (POSIX shells do that to `cmd &`), and its tasks would inherit it too and never stop on Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch_main(args) -> int:
    """CLI: `vqforge launch MAP.json [--out DIR] [--cpu] [--set KEY=VALUE ...]`."""
    # Ctrl-C (SIGINT) stops every task, also when this process inherited SIGINT ignored (see _interruptible)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return launch(args.map, out=args.out, cpu=args.cpu, overrides=args.overrides, refresh_s=args.refresh)
    except LaunchError as e:
        print(f"error: {e}\n  (nothing was started)", file=sys.stderr)
        return 2


__all__ = ["launch", "launch_main", "read_map", "prepare", "status_table", "Task", "LaunchError"]
