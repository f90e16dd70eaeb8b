"""Training throughput of the taming f16 VQGAN at 256² on one GPU: vqforge fp32/bf16 × eager/compile, and
taming-transformers fp32 on the same GPU in the same run.

Model: taming's f16 config (VQModel, ch 128, ch_mult [1, 1, 2, 2, 4], num_res_blocks 2, attn_resolutions [16],
z_channels 256, n_embed 1024, embed_dim 256), PatchGAN 3 layers / ndf 64, the full objective (L1 + LPIPS with the
stand-in VGG16 backbone + codebook + hinge GAN with adaptive weight, on from step 0): every step is a generator +
discriminator step pair, on one fixed random uint8 batch (no data loading in the timing). vqforge runs through
`Trainer.train_step()`; the reference through `bench/compare_taming.py`'s taming worker (its own `training_step`
for both optimizers), which needs taming-transformers and pytorch-lightning 1.9.5 importable by `--taming-python`
(`gpu_check.sh` installs them from carried wheels).

Per case: images/s, ms per step pair, peak GPU memory, and an MFU estimate: the step's FLOPs counted by
torch.utils.flop_counter (convolutions and matrix products, forward and backward, one step) × steps/s divided by
the GPU's dense bf16 peak (`--peak-tflops`, default from the device name: H100/H200 989, A100 312). The same
denominator is used for fp32 cases (their convolutions run as TF32), so the column compares cases directly.

    python bench/gpu_throughput.py [--device cuda] [--res 256] [--batch 8] [--steps 10] [--warmup 3]
        [--cases fp32-eager bf16-eager fp32-compile bf16-compile taming-fp32] [--json OUT]

`--device cpu --res 32 --batch 2 --steps 1 --warmup 1 --tiny` is the dry run used on machines without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import compare_taming  # noqa: E402

F16_DD = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "z_channels": 256,
          "dropout": 0.0}
TINY_DD = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 16, "dropout": 0.0}
# a suffix forces the memory format (-cl: channels_last, -cf: NCHW); without one, train.channels_last's default
CASES = ("fp32-eager", "bf16-eager", "fp32-compile", "bf16-compile", "taming-fp32",
         "fp32-eager-cf", "bf16-eager-cf", "bf16-compile-cf", "fp32-eager-cl", "bf16-eager-cl", "bf16-compile-cl")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def model_config(res: int, tiny: bool) -> tuple[dict, dict]:
    dd = dict(TINY_DD if tiny else F16_DD, resolution=res)
    model = {"family": "taming", "variant": "VQModel", "n_embed": 64 if tiny else 1024, "embed_dim": 8 if tiny else 256,
             "ddconfig": dd}
    loss = {"pixel_loss": "l1", "codebook_weight": 1.0, "use_gan": True, "disc_start": 0, "disc_loss": "hinge",
            "disc_factor": 1.0, "disc_weight": 0.8, "disc_num_layers": 2 if tiny else 3, "disc_ndf": 16 if tiny else 64,
            "disc_norm": "batch", "perceptual_weight": 0.0}
    return model, loss


def peak_tflops(device, override: float | None) -> float | None:
    if override:
        return override
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def step_flops(step_fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_fn()
    return counter.get_total_flops()


def print_profile(case: str, step_fn, cuda: bool, sync) -> None:
    """Where one step pair's time goes: the operators with the most device (or CPU) time over two pairs."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step_fn()
        sync()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(f"-- profile of {case} (2 step pairs, by {key})", flush=True)
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True)


def vqforge_case(case: str, args, batch_u8, work: Path) -> dict:
    import torch

    from vqforge.config import parse_config
    from vqforge.losses.objective import VQGANObjective
    from vqforge.losses.perceptual import LPIPS
    from vqforge.train.build import build_run

    precision, mode, *layout = case.split("-")
    model, loss = model_config(args.res, args.tiny)
    cfg = parse_config({
        "model": model, "loss": loss,
        "data": {"source": "sample_photos", "resolution": args.res, "batch_size": args.batch},
        "train": {"num_steps": 10**6, "precision": precision, "device": args.device, "compile": mode == "compile",
                  "channels_last": {"cf": False, "cl": True}.get(layout[0]) if layout else None,
                  "save_interval": 10**9, "validation_interval": 10**9, "seed": 0},
        "log": {"tensorboard": False, "progress": False, "every": 10**6},
    })
    run = build_run(cfg, work / f"run_{case}")
    t = run.trainer
    lc = copy.deepcopy(cfg.loss)
    lc.perceptual_weight = 1.0
    t.objective = VQGANObjective(lc, LPIPS(compare_taming.standin_vgg16_state())).to(t.device)
    if t.cfg.channels_last:
        t.objective.to(memory_format=torch.channels_last)
    fixed = batch_u8[:, None]  # (B, 1, H, W, C)
    if hasattr(t.stream, "stream"):  # the CUDA prefetcher wraps the stream: feed it the fixed batch
        t.stream.stream = iter(lambda: fixed, None)
        t.stream._next = None
    else:
        t.stream = iter(lambda: fixed, None)
    cuda = t.device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # compile happens here
        t.train_step()
    sync()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        r = t.train_step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if args.profile:
        print_profile(case, t.train_step, cuda, sync)
    flops = step_flops(t.train_step) if args.flops else None
    run.logger.close()
    return {"case": case, "precision": t.cfg.precision, "compile": bool(getattr(t.forward, "active", False)),
            "channels_last": t.cfg.channels_last, "step_s": statistics.median(times), "warmup_s": warm_s,
            "peak_mem_GiB": peak, "flops_per_step": flops, "finite": r.finite,
            "total_loss": r.terms.get("total_loss")}


def taming_case(args, batch_u8, work: Path) -> dict:
    import torch

    model, loss = model_config(args.res, args.tiny)
    torch.save(batch_u8.cpu(), work / "batch.pt")
    from safetensors.torch import load_file

    from vqforge.losses.perceptual import LPIPS_LIN_PATH

    torch.save(load_file(str(LPIPS_LIN_PATH)), work / "lpips_lin.pt")
    spec = {"model": model, "lr": 1e-4, "device": args.device,
            "loss": {k: loss[k] for k in ("codebook_weight", "disc_num_layers", "disc_factor", "disc_weight",
                                          "disc_norm", "disc_ndf", "disc_loss")}}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "init_weights.pt").unlink(missing_ok=True)  # the reference keeps its own initialisation here
    argv = [args.taming_python, str(BENCH / "compare_taming.py"), "--worker", "taming", "--case", "f16-gan",
            "--work", str(work), "--spec", str(work / "spec.json"), "--threads", str(torch.get_num_threads())]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if args.taming_path:
        env["PYTHONPATH"] = args.taming_path
    t0 = time.perf_counter()
    w = compare_taming.Worker("taming", argv, env)
    try:
        w.ask(cmd="run", steps=args.warmup)
        warm_s = time.perf_counter() - t0
        res = w.ask(cmd="run", steps=args.steps)
    finally:
        w.close()
    return {"case": "taming-fp32", "precision": "fp32", "compile": False, "channels_last": False,
            "step_s": statistics.median(res["times"]), "warmup_s": warm_s, "peak_mem_GiB": res["peak_mem_GiB"],
            "flops_per_step": None, "finite": None, "total_loss": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--tiny", action="store_true", help="a tiny network instead of f16 (dry runs)")
    ap.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count (MFU)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    ap.add_argument("--taming-python", default=sys.executable)
    ap.add_argument("--taming-path", default=os.environ.get("TAMING_SITE"),
                    help="PYTHONPATH for the reference worker (where taming and pytorch-lightning are installed)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table per vqforge case")
    args = ap.parse_args(argv)

    import torch

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batch_u8 = torch.randint(0, 256, (args.batch, args.res, args.res, 3), dtype=torch.uint8, generator=g)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vqforge-gpu-") as tmp:
        for case in args.cases:
            work = Path(tmp) / case
            work.mkdir()
            try:
                row = taming_case(args, batch_u8, work) if case == "taming-fp32" else \
                    vqforge_case(case, args, batch_u8, work)
            except Exception as e:  # noqa: BLE001 - one failing case must not hide the others' numbers
                row = {"case": case, "error": f"{type(e).__name__}: {str(e)[-600:]}"}
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
    flops = next((r["flops_per_step"] for r in rows if r.get("flops_per_step")), None)
    print(f"\n{'case':<13} {'images/s':>9} {'ms/pair':>8} {'peak GiB':>9} {'MFU':>6} {'warm-up s':>9}  (batch "
          f"{args.batch}, {args.res}², {torch.cuda.get_device_name(device) if device.type == 'cuda' else device})")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<13} failed: {r['error'][:300]}")
            continue
        ips = args.batch / r["step_s"]
        f = r["flops_per_step"] or flops  # the reference does at least the same work: counted with vqforge's
        mfu = f"{100 * f / r['step_s'] / (peak * 1e12):.1f}%" if (f and peak) else "-"
        mem = f"{r['peak_mem_GiB']:.2f}" if r["peak_mem_GiB"] is not None else "-"
        print(f"{r['case']:<13} {ips:>9.1f} {1000 * r['step_s']:>8.1f} {mem:>9} {mfu:>6} {r['warmup_s']:>9.1f}")
    print(f"MFU: counted FLOPs of one vqforge step pair ({(flops or 0) / 1e12:.3f} TFLOP) per second over the "
          f"dense bf16 peak ({peak} TFLOP/s); the reference's row uses the same count (it does more work per pair: "
          "a second autoencoder forward and two more backward passes through LPIPS and the discriminator)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
