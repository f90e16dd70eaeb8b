"""Step time of two vqforge source trees on the same case, alternating: made to compare the training step whose
skip decision stays on the device (fused Adam's found_inf, masked restore of the in-place state, masked weight EMA,
skip counters on the device) with the earlier one that read the decision back and branched on the host.

Each run is one `bench/train_step.py --child CASE` process (same network, data, batch and thread count), with
PYTHONPATH set to the tree's `src`; the trees alternate A, B, A, B, ... so load drifts hit both alike.

    git worktree add /tmp/vqforge-before <commit>   # or: git archive <commit> src | tar -x -C /tmp/vqforge-before
    nice -n 19 /work/venv/bin/python bench/skip_decision.py --before /tmp/vqforge-before/src --after src \\
        --cases ref-gan qs-nogan --rounds 3 --steps 10 --warmup 2 --threads 1 --fixed-batch

Prints every run's median step time and, per case, the median over runs of after/before (paired by round) with the
1-minute load average before and after each run (the machine is shared: say so with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TRAIN_STEP = Path(__file__).resolve().parent / "train_step.py"


def run_child(src: str, case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(TRAIN_STEP), "--child", case, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)] + (["--fixed-batch"] if args.fixed_batch else [])
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{case} with {src}: benchmark process failed (exit {proc.returncode})")
    return json.loads(line[len("BENCH_RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="src directory of the earlier tree")
    ap.add_argument("--after", required=True, help="src directory of the tree to compare")
    ap.add_argument("--cases", nargs="+", default=["ref-gan", "qs-nogan"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fixed-batch", action="store_true")
    args = ap.parse_args()
    ratios: dict[str, dict[str, list[float]]] = {c: {"wall": [], "cpu": [], "min": []} for c in args.cases}
    for r in range(args.rounds):
        for case in args.cases:
            pair = {}
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for side in order:
                res = run_child(getattr(args, side), case, args)
                pair[side] = res
                print(f"round {r + 1} {case:<10} {side:<6} wall median {res['step_s_median']:.3f} s/step "
                      f"(min {res['step_s_min']:.3f}), process CPU median {res['cpu_s_median']:.3f} s/step, "
                      f"tensor peak {res['tensor_peak_mib']:.0f} MiB, load {res['load_before']:.1f} -> "
                      f"{res['load_after']:.1f}", flush=True)
            for key, field in (("wall", "step_s_median"), ("cpu", "cpu_s_median"), ("min", "step_s_min")):
                ratios[case][key].append(pair["after"][field] / pair["before"][field])
    for case, rs in ratios.items():
        print(f"{case}: after/before over {args.rounds} rounds, median of the paired ratios: "
              + "; ".join(f"{k} {statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"
                          for k, v in rs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
