"""Step time and peak memory of one VQ-VAE-2 training step on CPU.

One step = forward + L1 reconstruction + codebook loss + backward + Adam step (what the trainer does without the
perceptual and GAN terms). Default: nb_levels 2, scaling_rates [4, 2], hidden 128, 128×128 images, batch 8.

    .venv/bin/python bench/vqvae2_step.py [--batch 8 --size 128 --hidden 128 --rates 4 2 --steps 10 --threads N]

Memory, two numbers (tracemalloc cannot be used: it only sees allocations made through Python's allocator, and torch
allocates tensor storage in C++ through its own CPU allocator, so activations and gradients are invisible to it):

- `rss_peak_delta`: increase of the process's peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) from
  just before the first training step to the end of the run. ru_maxrss is a high-water mark, so this is how far the
  training steps pushed the peak above what import + model + batch already used. It includes allocator overhead and
  fragmentation, which is what the machine really needs, but it can under-count if memory freed before the first
  step is reused.
- `tensor_peak`: exact peak of live tensor bytes during one (warmed-up) step, from torch's profiler
  (`profile_memory=True`): the memory events of the step, summed in time order, give the live bytes allocated by the
  step at every instant; their maximum is added to the bytes already alive before the step (parameters, gradients,
  Adam state, buffers, input batch), counted from the tensors themselves.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vqforge.config.schema import ModelConfig, VQVAE2Config
from vqforge.models.vqvae2 import VQVAE2

MIB = 1024 * 1024


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def resident_tensor_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> int:
    """Bytes of the tensors alive between steps: parameters, buffers, gradients, optimizer state, input."""
    ts = list(model.parameters()) + list(model.buffers()) + [p.grad for p in model.parameters()] + [x]
    for state in opt.state.values():
        ts += [v for v in state.values() if torch.is_tensor(v)]
    return tensor_bytes(ts)


def train_step(model: VQVAE2, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    out = model(x)
    loss = F.l1_loss(out.reconstruction, x) + out.codebook_loss
    opt.zero_grad(set_to_none=False)  # keep gradient buffers allocated between steps, as the trainer does
    loss.backward()
    opt.step()
    return loss.item()


def profiled_peak(model: VQVAE2, opt: torch.optim.Optimizer, x: torch.Tensor) -> int:
    """Peak of the bytes allocated (net of frees) by one step, relative to its start."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, opt, x)
    # the raw allocator records (one per allocation / free, signed bytes); prof.events() would fold them into the
    # enclosing op's net usage and hide the temporaries freed inside an op
    records = [e for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and str(e.device_type()) == "DeviceType.CPU"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()  # + for an allocation, - for a free
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--rates", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = ModelConfig(family="vqvae2", variant=None,
                      vqvae2=VQVAE2Config(hidden_channels=args.hidden, nb_levels=len(args.rates), scaling_rates=args.rates))
    cfg.check("model")
    model = VQVAE2(cfg).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(args.batch, cfg.vqvae2.in_channels, args.size, args.size) * 2 - 1
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    rss_before = max_rss_bytes()
    for _ in range(2):  # warm-up: allocator pools, Adam state, oneDNN primitive caches
        train_step(model, opt, x)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_step(model, opt, x)
        times.append(time.perf_counter() - t0)
    rss_delta = max_rss_bytes() - rss_before

    resident = resident_tensor_bytes(model, opt, x)
    step_peak = profiled_peak(model, opt, x)

    result = {
        "config": {"nb_levels": len(args.rates), "scaling_rates": args.rates, "hidden_channels": args.hidden,
                   "res_channels": cfg.vqvae2.res_channels, "nb_res_layers": cfg.vqvae2.nb_res_layers,
                   "embed_dim": cfg.vqvae2.embed_dim, "nb_entries": cfg.vqvae2.nb_entries,
                   "batch": args.batch, "size": args.size},
        "trainable_params": n_params,
        "index_shapes": model.index_shapes(args.size, args.size),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "step_s_median": statistics.median(times), "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times), "step_s_max": max(times), "timed_steps": len(times),
        "rss_peak_delta_mib": rss_delta / MIB, "rss_peak_mib": max_rss_bytes() / MIB,
        "resident_tensor_mib": resident / MIB, "step_tensor_peak_mib": step_peak / MIB,
        "tensor_peak_mib": (resident + step_peak) / MIB,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        c = result["config"]
        print(f"VQ-VAE-2 levels={c['nb_levels']} rates={c['scaling_rates']} hidden={c['hidden_channels']} "
              f"batch={c['batch']} {c['size']}x{c['size']}  ({n_params / 1e6:.2f} M trainable params, "
              f"index maps {result['index_shapes']})")
        print(f"torch {result['torch']}, {result['threads']} threads")
        print(f"step time   median {result['step_s_median'] * 1e3:.0f} ms  mean {result['step_s_mean'] * 1e3:.0f} ms  "
              f"min {result['step_s_min'] * 1e3:.0f} ms  max {result['step_s_max'] * 1e3:.0f} ms  ({len(times)} steps)")
        print(f"peak memory tensors {result['tensor_peak_mib']:.0f} MiB (resident {result['resident_tensor_mib']:.0f} MiB "
              f"+ step {result['step_tensor_peak_mib']:.0f} MiB);  max RSS +{result['rss_peak_delta_mib']:.0f} MiB "
              f"over the pre-training peak (process peak {result['rss_peak_mib']:.0f} MiB)")
    return result


if __name__ == "__main__":
    main()
