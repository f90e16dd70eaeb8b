"""Training-step time and peak memory of vqforge's real `Trainer.train_step()` on CPU, GAN on and off.

Cases (each runs in its own subprocess, so peak RSS and thread pools of one case never leak into the next):

- `ref-gan`: the tiny taming-transformers reference config (VQModel, ch 32, ch_mult [1, 2], num_res_blocks 1,
  attn_resolutions [8] (at 64×64 no level works at 8, so only the mid-block attention exists: written [] here),
  z_channels 16, embed_dim 8, n_embed 64; batch 4 at 64×64) with the full objective: L1 +
  LPIPS + codebook + hinge GAN with the adaptive weight (PatchGAN of the golden fixtures: 2 layers, ndf 16,
  disc_weight 0.8), `disc_start 0` so every measured step is a generator + discriminator step pair.
- `ref-nogan`: the same model with `use_gan: false` and no LPIPS: L1 + codebook (the reference's autoencoder step).
- `ref-nogan-lpips`: GAN off with LPIPS (for information; no target).
- `qs-gan` / `qs-nogan`: `configs/examples/quickstart_vqgan.yaml` (the first quickstart) as written (EMAVQ, k-means init, code restarts, weight EMA,
  perceptual_weight 0) with `disc_start 0, disc_warmup_steps 0` (GAN on: every step a pair) or `use_gan: false`.
- `qs-gan-lpips`: the quickstart with LPIPS on, as `make demo` runs it when VGG16 weights are present.

Every case is built through vqforge's own path: `parse_config` of a native dict, then `build_run(cfg, run_dir)`;
the measured call is `run.trainer.train_step()`, exactly what `vqforge train` runs (LR schedule, zero_grad,
snapshot of in-place state, forward, objective, backward, grad norm, Adam, weight EMA, discriminator step).
LPIPS: VGG16 ImageNet weights are not available offline, so the cases with LPIPS use the deterministic stand-in
backbone of `shared/golden/taming/README.md`; the run is built with perceptual_weight 0 (so `build_objective` does
not look for the weight file) and `trainer.objective` is then replaced by `VQGANObjective(loss_cfg, LPIPS(stand_in))`
with perceptual_weight restored. The compute is identical to the real weights.

Data: by default the trainer's own stream of sample photos (resize 128, 64×64 random crops, batch 4 for the
reference, the quickstart's own settings otherwise). `--fixed-batch` feeds one fixed uint8 batch instead, which
isolates compute from loading.

Timing: `torch.set_num_threads(--threads)` (2), `--warmup` untimed steps, then `--steps` timed steps (≥ 10);
median and IQR of the wall time, and the median process CPU time per step. On a shared machine other processes
inflate the wall time (with 2 threads on 2 cores every parallel region waits for a descheduled thread), so each
case records the 1-minute load average before and after, and the cores other processes kept busy during its timed
steps (busy time in /proc/stat minus this process's own CPU time). `--quiet CORES` waits before each case until
other processes use fewer than CORES cores; `--repeat N` runs every case N times, round robin, each in a fresh
process (on this VM the step time of identical processes varies by up to ~30% from process to process, while the
IQR within one is a few %). The table pools the timed steps of the quiet runs (other processes below 0.5 cores)
and lists every run's median.

Memory, per case:
- `tensor_peak`: exact peak of live tensor bytes during one warmed-up step, from torch's profiler
  (`profile_memory=True`). The profiler's raw allocator records (one per allocation or free, signed bytes) summed in
  time order give the live bytes the step allocated at every instant; their maximum is added to the bytes alive
  before the step (counted from the tensors themselves: model, gradients, optimizer state, weight EMA, LPIPS,
  discriminator). tracemalloc cannot be used: torch allocates tensor storage in C++, invisible to it.
- `rss_peak_delta`: how far the training steps pushed the process's peak resident set
  (`getrusage(...).ru_maxrss`) above its peak after building the run (includes allocator overhead).
- `disc_bytes`: bytes of discriminator parameters, buffers, gradients and its optimizer's state. GAN off must
  show 0 here and no discriminator object at all (`trainer.discriminator`, `trainer.opt_d` are None and no
  `NLayerDiscriminator` is reachable from the trainer).

    .venv/bin/python bench/train_step.py [--cases ref-gan ref-nogan qs-gan qs-nogan] [--steps 15 --warmup 3]
                                         [--threads 2] [--repeat N] [--quiet CORES] [--fixed-batch] [--json]

A GAN-off case holding discriminator state prints a `NOT MET` line (exit status 1 with `--strict`; a case that
crashes always exits 1). Speed relative to taming-transformers: `bench/compare_taming.py`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

# Ratios against taming-transformers are measured by bench/compare_taming.py (the same network on both sides, in one
# run, alternating); this benchmark reports vqforge's own step time and memory and has no time targets.
TARGETS: dict[str, tuple[float, str]] = {}

REFERENCE_CONFIG = {
    "model": {
        "family": "taming",
        "variant": "VQModel",
        "n_embed": 64,
        "embed_dim": 8,
        # the reference's attn_resolutions [8] never occurs here (its levels work at 64 and 32, so taming builds
        # only the mid-block attention); vqforge rejects that no-op setting, and [] builds the same network
        "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 16,
                     "resolution": 64, "dropout": 0.0},
    },
    # the golden fixtures' loss parameters (VQLPIPSWithDiscriminator), adversarial term on from step 0
    "loss": {"pixel_loss": "l1", "perceptual_weight": 1.0, "codebook_weight": 1.0, "use_gan": True,
             "disc_loss": "hinge", "disc_start": 0, "disc_factor": 1.0, "disc_weight": 0.8, "disc_num_layers": 2,
             "disc_ndf": 16, "disc_norm": "batch"},
    "data": {"source": "sample_photos", "resolution": 64, "resize": 128, "batch_size": 4},
    "train": {"num_steps": 100000, "lr": 1.0e-4, "disc_update_every": 1, "seed": 0, "device": "cpu",
              "save_interval": 10**9, "validation_interval": 10**9},
}

CASES = ("ref-gan", "ref-nogan", "ref-nogan-lpips", "qs-gan", "qs-nogan", "qs-gan-lpips")
DEFAULT_CASES = ("ref-gan", "ref-nogan", "qs-gan", "qs-nogan")


def merge_dicts(a: dict, b: dict) -> dict:
    """Merge the nested dict b into a, in place (b's leaves win); returns a. Also used by compare_taming.py."""
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge_dicts(a[k], v)
        else:
            a[k] = v
    return a


def case_config(case: str) -> tuple[dict, bool]:
    """Native config dict for `case` and whether it uses LPIPS."""
    if case.startswith("ref-"):
        raw = copy.deepcopy(REFERENCE_CONFIG)
    else:
        from vqforge.config.readers import read_raw

        raw = read_raw(REPO / "configs" / "examples" / "quickstart_vqgan.yaml")
        raw.setdefault("train", {}).update(device="cpu", num_steps=100000, save_interval=10**9,
                                           validation_interval=10**9)
    gan = case.endswith("-gan") or case.endswith("-gan-lpips")
    lpips = case.endswith("-lpips") or case == "ref-gan"
    if gan:
        merge_dicts(raw, {"loss": {"use_gan": True, "disc_start": 0}, "train": {"disc_warmup_steps": 0}})
    else:
        merge_dicts(raw, {"loss": {"use_gan": False}})
    # built without LPIPS (its weights are not available offline); the stand-in is put in afterwards
    merge_dicts(raw, {"loss": {"perceptual_weight": 0.0}, "log": {"tensorboard": False, "progress": False, "wandb": False}})
    return raw, lpips


def standin_vgg16():
    """The deterministic VGG16 stand-in of shared/golden/taming/README.md (seed 1234, He-scaled randn, bias × 0.01)."""
    import torch

    from vqforge.losses.vgg import CONV_CHANNELS, CONV_INDICES

    g = torch.Generator().manual_seed(1234)
    sd, cin = {}, 3
    for idx, cout in zip(CONV_INDICES, CONV_CHANNELS):
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
        cin = cout
    return sd


# --- memory accounting ---------------------------------------------------------------------------------------------

def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have spent busy (user+nice+system+irq+softirq+steal), from
    /proc/stat; None where it does not exist."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def others_busy_cores(seconds: float) -> float | None:
    """How many cores other processes kept busy during a `seconds`-long idle wait of this process."""
    b0, o0, t0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    b1, o1, t1 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    if b0 is None or b1 is None:
        return None
    return max(0.0, (b1 - b0) - (o1 - o0)) / (t1 - t0)


def tensor_bytes(tensors, seen: set | None = None) -> int:
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def module_and_opt_tensors(module, opt) -> list:
    if module is None:
        return []
    ts = list(module.parameters()) + list(module.buffers()) + [p.grad for p in module.parameters()]
    if opt is not None:
        for state in opt.state.values():
            ts += [v for v in state.values() if hasattr(v, "untyped_storage")]
    return ts


def resident_bytes(trainer) -> int:
    """Tensors alive between steps: model (+grads, Adam state), weight EMA, objective (LPIPS), discriminator."""
    ts = module_and_opt_tensors(trainer.model, trainer.opt_g)
    if trainer.ema is not None:
        ts += list(trainer.ema.shadow.parameters()) + list(trainer.ema.shadow.buffers())
    ts += list(trainer.objective.parameters()) + list(trainer.objective.buffers())
    ts += module_and_opt_tensors(trainer.discriminator, trainer.opt_d)
    return tensor_bytes(ts)


def discriminator_report(trainer) -> dict:
    from vqforge.losses.discriminator import NLayerDiscriminator

    reachable = [m for root in (trainer.model, trainer.objective, trainer.discriminator) if root is not None
                 for m in root.modules() if isinstance(m, NLayerDiscriminator)]
    d, opt = trainer.discriminator, trainer.opt_d
    params = tensor_bytes(list(d.parameters()) + list(d.buffers())) if d is not None else 0
    grads = tensor_bytes([p.grad for p in d.parameters()]) if d is not None else 0
    opt_state = tensor_bytes([v for s in opt.state.values() for v in s.values() if hasattr(v, "untyped_storage")]) \
        if opt is not None else 0
    return {"discriminator_exists": d is not None, "disc_optimizer_exists": opt is not None,
            "disc_modules_reachable": len(reachable), "disc_param_buffer_bytes": params, "disc_grad_bytes": grads,
            "disc_adam_state_bytes": opt_state, "disc_bytes": params + grads + opt_state}


def profiled_step_peak(step_fn) -> int:
    """Peak of the bytes allocated (net of frees) during one call of `step_fn`, relative to its start."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step_fn()
    # the raw allocator records; prof.events() would fold them into each op's net usage and hide temporaries
    records = [e for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and str(e.device_type()) == "DeviceType.CPU"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()  # + allocation, - free
        peak = max(peak, live)
    return peak


# --- one case (child process) --------------------------------------------------------------------------------------

class FixedBatches:
    """Stands in for the train stream: the same uint8 batch every time (compute only, no loading)."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch


def run_case(case: str, *, steps: int, warmup: int, threads: int, fixed_batch: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    from vqforge.config import parse_config
    from vqforge.losses.objective import VQGANObjective
    from vqforge.losses.perceptual import LPIPS
    from vqforge.train.build import build_run

    raw, use_lpips = case_config(case)
    cfg = parse_config(raw)
    with tempfile.TemporaryDirectory(prefix="vqforge-bench-") as tmp:
        run = build_run(cfg, Path(tmp) / "run")
        trainer = run.trainer
        if use_lpips:
            loss_cfg = copy.deepcopy(cfg.loss)
            loss_cfg.perceptual_weight = 1.0
            trainer.objective = VQGANObjective(loss_cfg, LPIPS(standin_vgg16())).to(trainer.device)
        if fixed_batch:
            trainer.stream = FixedBatches(next(trainer.stream))

        disc_params = sum(p.numel() for p in trainer.disc_params)
        rss_before = max_rss_bytes()
        load_before = os.getloadavg()[0]
        for _ in range(warmup):  # allocator pools, Adam state, oneDNN primitive caches, k-means init
            trainer.train_step()
        times, cpu_times = [], []
        busy0, own0, wall0 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            res = trainer.train_step()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        busy1, own1, wall1 = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        # cores kept busy by other processes while the timed steps ran (0 on a quiet machine)
        others = (max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)) if busy0 is not None else None
        terms = res.terms
        load_after = os.getloadavg()[0]
        rss_delta = max_rss_bytes() - rss_before
        resident = resident_bytes(trainer)
        step_peak = profiled_step_peak(trainer.train_step)
        disc = discriminator_report(trainer)
        disc_steps = trainer.counters.disc_steps
        run.logger.close()

    q = statistics.quantiles(times, n=4)
    return {
        "case": case, "gan": cfg.loss.use_gan, "lpips": use_lpips, "fixed_batch": fixed_batch,
        "model": {"variant": cfg.model.variant, "ch": cfg.model.ddconfig.ch, "ch_mult": cfg.model.ddconfig.ch_mult,
                  "n_embed": cfg.model.n_embed, "embed_dim": cfg.model.embed_dim,
                  "trainable_params": sum(p.numel() for p in trainer.gen_params), "disc_params": disc_params},
        "batch": cfg.data.batch_size, "resolution": cfg.data.resolution,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "step_s_median": statistics.median(times), "step_s_q1": q[0], "step_s_q3": q[2], "step_s_iqr": q[2] - q[0],
        "step_s_min": min(times), "step_s_max": max(times), "timed_steps": len(times), "step_times_s": times,
        "cpu_s_median": statistics.median(cpu_times),
        "disc_steps": disc_steps, "last_terms": {k: v for k, v in terms.items()},
        "load_before": load_before, "load_after": load_after, "others_busy_cores": others,
        "resident_tensor_mib": resident / MIB, "step_tensor_peak_mib": step_peak / MIB,
        "tensor_peak_mib": (resident + step_peak) / MIB, "rss_peak_delta_mib": rss_delta / MIB,
        "rss_peak_mib": max_rss_bytes() / MIB, **disc,
    }


# --- driver --------------------------------------------------------------------------------------------------------

def _check(result: dict) -> list[str]:
    """Target and GAN-off memory checks for one case; returns failure lines."""
    fails = []
    tgt = TARGETS.get(result["case"])
    if tgt is not None and result["step_s_median"] > tgt[0]:
        fails.append(f"{result['case']}: median {result['step_s_median']:.3f} s misses the target {tgt[0]:.3f} s")
    if not result["gan"] and (result["disc_bytes"] or result["discriminator_exists"] or result["disc_optimizer_exists"]
                              or result["disc_modules_reachable"]):
        fails.append(f"{result['case']}: GAN off but a discriminator or its state exists")
    return fails


QUIET_CORES = 0.5  # a run counts as quiet when other processes kept fewer cores than this busy


def summarize(runs: list[dict]) -> dict:
    """One row per case from its runs: step times of the quiet runs pooled (all runs if none was quiet)."""
    quiet = [r for r in runs if (r.get("others_busy_cores") or 0.0) < QUIET_CORES] or runs
    times = [t for r in quiet for t in r["step_times_s"]]
    q = statistics.quantiles(times, n=4)
    row = dict(quiet[0])  # configuration, memory and discriminator fields are the same in every run
    row.update(
        step_s_median=statistics.median(times), step_s_iqr=q[2] - q[0],
        cpu_s_median=statistics.median(r["cpu_s_median"] for r in quiet),
        rss_peak_delta_mib=max(r["rss_peak_delta_mib"] for r in quiet),
        tensor_peak_mib=max(r["tensor_peak_mib"] for r in quiet),
        load_before=min(r["load_before"] for r in quiet), load_after=max(r["load_after"] for r in quiet),
        others_busy_cores=max((r["others_busy_cores"] for r in quiet if r.get("others_busy_cores") is not None),
                              default=None),
        runs_used=len(quiet), run_medians=[r["step_s_median"] for r in runs],
        disc_bytes=max(r["disc_bytes"] for r in runs),
        discriminator_exists=any(r["discriminator_exists"] for r in runs),
        disc_optimizer_exists=any(r["disc_optimizer_exists"] for r in runs),
        disc_modules_reachable=max(r["disc_modules_reachable"] for r in runs),
    )
    return row


def _fmt_load(r: dict) -> str:
    others = r.get("others_busy_cores")
    return f"{r['load_before']:.2f}/{r['load_after']:.2f}" + (f" {others:.2f}" if others is not None else " -")


def print_table(results: list[dict]) -> None:
    hdr = (f"{'case':<16} {'GAN':<4} {'LPIPS':<5} {'median s':>8} {'IQR s':>7} {'CPU s':>6} {'target s':>8} "
           f"{'tensor peak':>11} {'RSS +':>8} {'disc bytes':>10}  {'load (before/after, others)':<27} runs")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        tgt = TARGETS.get(r["case"])
        runs = " ".join(f"{m:.3f}" for m in r["run_medians"]) + f" ({r['runs_used']} quiet)"
        print(f"{r['case']:<16} {'on' if r['gan'] else 'off':<4} {'on' if r['lpips'] else 'off':<5} "
              f"{r['step_s_median']:>8.3f} {r['step_s_iqr']:>7.3f} {r['cpu_s_median']:>6.3f} "
              f"{(f'{tgt[0]:.3f}' if tgt else '-'):>8} {r['tensor_peak_mib']:>7.1f} MiB {r['rss_peak_delta_mib']:>4.0f} MiB "
              f"{r['disc_bytes']:>10,d}  {_fmt_load(r):<27} {runs}")
    print("median/IQR: wall time per train_step, timed steps of the quiet runs pooled; CPU s: process CPU time per\n"
          "step (both threads); tensor peak: resident tensors + the step's own peak (torch profiler); RSS +: rise\n"
          "of the peak RSS during the steps; disc bytes: discriminator params, buffers, grads and Adam state;\n"
          "load: lowest 1-min load average before / highest after, then the most cores other processes kept busy\n"
          f"during a used run (/proc/stat); runs: each run's median (quiet: others < {QUIET_CORES} cores)")
    for case, (t, how) in TARGETS.items():
        print(f"target {case}: {t:.3f} s ({how})")


def wait_for_quiet(max_busy: float, max_wait_s: float) -> float | None:
    """Wait until other processes keep fewer than `max_busy` cores busy (2-s samples), at most `max_wait_s`."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = others_busy_cores(2.0)
        if busy is None or busy < max_busy or time.monotonic() >= deadline:
            return busy
        print(f"    waiting for a quieter machine (other processes use {busy:.2f} cores)", flush=True)
        time.sleep(8.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(DEFAULT_CASES))
    ap.add_argument("--steps", type=int, default=15, help="timed steps per case (at least 10)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="run every case this many times (round robin)")
    ap.add_argument("--quiet", type=float, default=None, metavar="CORES",
                    help="before each case wait until other processes keep fewer than CORES cores busy")
    ap.add_argument("--quiet-wait", type=float, default=300.0, help="longest wait for --quiet, seconds")
    ap.add_argument("--fixed-batch", action="store_true", help="feed one fixed batch instead of the data stream")
    ap.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="default",
                    help="OMP_WAIT_POLICY for the measured processes (passive: idle OpenMP threads sleep instead "
                         "of spinning, which matters when other processes compete for the cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON list (every run) instead of the table")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 when a target is not met")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args(argv)
    if args.steps < 10:
        ap.error("--steps must be at least 10")

    if args.child:
        res = run_case(args.child, steps=args.steps, warmup=args.warmup, threads=args.threads,
                       fixed_batch=args.fixed_batch)
        print("BENCH_RESULT " + json.dumps(res))
        return 0

    log = sys.stderr if args.json else sys.stdout
    print(f"vqforge train_step benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps, "
          f"data: {'one fixed batch' if args.fixed_batch else 'sample-photo stream'}, "
          f"OMP_WAIT_POLICY {args.omp_wait_policy if args.omp_wait_policy != 'default' else os.environ.get('OMP_WAIT_POLICY', 'unset')}",
          file=log, flush=True)
    all_runs: dict[str, list[dict]] = {c: [] for c in args.cases}
    failures: list[str] = []
    for rep in range(args.repeat):
        for case in args.cases:
            if args.quiet is not None:
                wait_for_quiet(args.quiet, args.quiet_wait)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]
            cmd += ["--fixed-batch"] if args.fixed_batch else []
            env = dict(os.environ)
            if args.omp_wait_policy != "default":
                env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stdout + proc.stderr)
                failures.append(f"{case}: benchmark process failed (exit {proc.returncode})")
                continue
            res = json.loads(line[len("BENCH_RESULT "):])
            res["repeat"] = rep
            all_runs[case].append(res)
            print(f"  {case} [{rep + 1}/{args.repeat}]: median {res['step_s_median']:.3f} s  (load {_fmt_load(res)})",
                  file=log, flush=True)

    rows = [summarize(runs) for runs in all_runs.values() if runs]
    for r in rows:
        failures += _check(r)
    if args.json:
        print(json.dumps({"summary": rows, "runs": [r for runs in all_runs.values() for r in runs]}, indent=2))
    else:
        print_table(rows)
    for f in failures:
        print("NOT MET: " + f, file=log)
    crashed = any("process failed" in f for f in failures)
    return 1 if crashed or (failures and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
