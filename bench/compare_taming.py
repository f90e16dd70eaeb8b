"""vqforge against taming-transformers on the same network, measured in one run, alternating.

Two worker processes, one per implementation, each with its own interpreter: the reference runs in a separate
virtual environment (taming-transformers is not a dependency of vqforge and needs pytorch-lightning 1.x); vqforge
runs in the interpreter that starts this script. A coordinator talks to both over pipes (one JSON line per
command) and lets only one of them compute at a time: after warm-up it runs blocks of `--block-steps` steps,
alternating reference and vqforge (ABBA order, so a slow drift of the machine's load hits both alike). Each block
gives one ratio vqforge / reference of the mean step times; the table shows the median and the IQR of those ratios.

Both sides get:
- the same network: the ddconfig, n_embed and embed_dim of the case, taming's PatchGAN with the same layers, ndf and
  BatchNorm, LPIPS with the real v0.1 linear heads and the deterministic stand-in VGG16 backbone of
  `shared/golden/taming/README.md` (ImageNet weights cannot be had offline; the compute is identical);
- the same initial weights: vqforge's initial tokenizer and discriminator state dicts are loaded into the reference
  (taming's key names are vqforge's);
- the same input: one fixed batch of 64×64 crops of the sample photos (compute only, no data loading on either
  side), `torch.set_num_threads(--threads)` and the same torch build.

Cases (`--cases`, default all):
- `tiny-gan`: the tiny reference network (VQModel, ch 32, ch_mult [1, 2], num_res_blocks 1, z_channels 16,
  embed_dim 8, n_embed 64; PatchGAN 2 layers, ndf 16; batch 4 at 64²) with the full objective, L1 + LPIPS + codebook
  + hinge GAN with the adaptive weight, adversarial term on: one generator + discriminator step pair per step.
- `tiny-ae`: the same network, autoencoder step only: L1 + codebook loss, no discriminator, no LPIPS.
- `qs-gan`, `qs-ae`: the same two steps for the network of `configs/examples/quickstart_vqgan.yaml` (the first quickstart) (ch 32, ch_mult [1, 2],
  z_channels 32, embed_dim 32, n_embed 256; PatchGAN 2 layers, ndf 32; its batch of 8). vqforge trains it as that
  config does (EMA codebook with k-means init and code restarts, weight EMA); the reference release has no working
  EMA quantizer, so it uses its `VectorQuantizer2` there (the quantizer is a small part of the step).

What a step is on each side:
- reference GAN pair: what Lightning's automatic optimization does for `VQModel` with its two optimizers, without
  the Lightning Trainer's own bookkeeping (which only adds time on the reference side): for optimizer 0 then 1,
  the other optimizer's parameters frozen (Lightning's `toggle_optimizer`), `loss = model.training_step(batch, i,
  idx)`, `zero_grad`, `backward`, `step`. The reference computes the autoencoder forward twice (once per optimizer).
- reference autoencoder step: taming's `VQModel` forward, `mean(|x − x̂|) + codebook loss`, backward, Adam step
  (`VQLPIPSWithDiscriminator` cannot switch its discriminator off, so this is its loss with the GAN removed).
- vqforge: `Trainer.train_step()` of a run built by `build_run` from the case's config, exactly what `vqforge train`
  runs (LR schedule, non-finite guard and snapshot, gradient norm, Adam, weight EMA, discriminator step).

After the timed blocks every worker runs `--profile-steps` steps under torch.profiler and the output lists the top
operators by self CPU time for both sides ("where the time goes"). The 1-minute load average before and after each
case is printed: this machine is shared, so ratios from one alternating run are what counts, not absolute times.

Setup of the reference environment (done by this script when `--taming-python` does not exist yet; needs PyPI):

    python3 -m venv /work/venv-taming
    /work/venv-taming/bin/pip install torch==<the version vqforge runs with>
    /work/venv-taming/bin/pip install --no-deps taming-transformers-rom1504==0.0.6 pytorch-lightning==1.9.5 \\
        torchmetrics==1.4.0
    /work/venv-taming/bin/pip install omegaconf einops numpy tqdm pillow requests packaging pyyaml fsspec \\
        lightning-utilities typing-extensions "setuptools<81"

torchvision is not installed: the worker puts a minimal `torchvision.models.vgg16` in front of the import (the
VGG16 feature stack, conv3×3/ReLU/max-pool, carrying the stand-in weights), and hands taming's LPIPS the linear-head
file through its own loader. Run:

    PYTHONPATH=$PWD/src python bench/compare_taming.py [--cases tiny-gan tiny-ae qs-gan qs-ae] [--blocks 8]
        [--block-steps 3] [--warmup 3] [--threads 2] [--taming-python /work/venv-taming/bin/python] [--json OUT]

vqforge-side options (`--compile`, `--channels-last`, `--set KEY=VALUE`) let one run compare a lever's effect; the
default is vqforge's own default configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_step import merge_dicts  # this folder is on sys.path when a bench script runs

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_TAMING_PYTHON = os.environ.get("VQFORGE_TAMING_PYTHON", "/work/venv-taming/bin/python")
CASES = ("tiny-gan", "tiny-ae", "qs-gan", "qs-ae")
TAMING_NO_DEPS = ["taming-transformers-rom1504==0.0.6", "pytorch-lightning==1.9.5", "torchmetrics==1.4.0"]
TAMING_DEPS = ["omegaconf", "einops", "numpy", "tqdm", "pillow", "requests", "packaging", "pyyaml", "fsspec",
               "lightning-utilities", "typing-extensions", "setuptools<81"]

# the tiny reference network (the golden fixtures' model at 64x64)
TINY_MODEL = {"family": "taming", "variant": "VQModel", "n_embed": 64, "embed_dim": 8,
              "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                           "z_channels": 16, "resolution": 64, "dropout": 0.0}}
TINY_LOSS = {"pixel_loss": "l1", "codebook_weight": 1.0, "disc_loss": "hinge", "disc_factor": 1.0,
             "disc_weight": 0.8, "disc_num_layers": 2, "disc_ndf": 16, "disc_norm": "batch"}


# ---------------------------------------------------------------------------------------------------------------
# the vqforge side's configuration (the reference is built from the same resolved values)
# ---------------------------------------------------------------------------------------------------------------

def case_config(case: str, overrides: dict | None = None) -> dict:
    """Native vqforge config dict for `case`, built with perceptual_weight 0 (the stand-in LPIPS goes in after)."""
    import copy

    gan = case.endswith("-gan")
    if case.startswith("tiny-"):
        raw = {"model": copy.deepcopy(TINY_MODEL), "loss": dict(TINY_LOSS),
               "data": {"source": "sample_photos", "resolution": 64, "resize": 128, "batch_size": 4},
               "train": {"lr": 1.0e-4, "disc_update_every": 1}}
    else:
        from vqforge.config.readers import read_raw

        raw = read_raw(REPO / "configs" / "examples" / "quickstart_vqgan.yaml")
    merge_dicts(raw, {"train": {"device": "cpu", "num_steps": 10**6, "save_interval": 10**9, "validation_interval": 10**9,
                           "seed": 0, "disc_warmup_steps": 0},
                 "log": {"tensorboard": False, "progress": False, "wandb": False, "every": 10**6},
                 "loss": {"use_gan": gan, "perceptual_weight": 0.0}})
    if gan:
        merge_dicts(raw, {"loss": {"disc_start": 0}})
    else:  # fields that have no effect without a discriminator would only produce a warning
        for k in ("disc_start", "disc_weight", "disc_num_layers", "disc_ndf", "disc_norm", "disc_loss", "disc_factor"):
            raw["loss"].pop(k, None)
        raw["train"].pop("disc_update_every", None)
        raw["train"].pop("disc_warmup_steps", None)
    for key, value in (overrides or {}).items():
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def standin_vgg16_state():
    """The deterministic VGG16 stand-in of shared/golden/taming/README.md (seed 1234, He-scaled randn, bias × 0.01),
    keyed `features.{i}.weight|bias` by the index of each conv in VGG16's feature stack."""
    import torch

    convs = [(0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256), (17, 512), (19, 512), (21, 512),
             (24, 512), (26, 512), (28, 512)]
    g = torch.Generator().manual_seed(1234)
    sd, cin = {}, 3
    for idx, cout in convs:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (cin * 9)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
        cin = cout
    return sd


def _quiet_import_stdout():
    """Workers answer on the real stdout; everything the libraries print goes to stderr instead."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return proto


def _profile_table(fn, steps: int, rows: int) -> str:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=44)


def _serve(proto, step_fn, info: dict, device: str = "cpu") -> None:
    """The worker loop: answer commands from the coordinator on stdin until 'quit'. On CUDA every timed step ends
    with a synchronize, so a step's time is its GPU time; "peak" reports the peak GPU memory since the last ask."""
    import torch

    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    proto.write(json.dumps({"ready": True, **info}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "run":
            times = []
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            for _ in range(cmd["steps"]):
                t0 = time.perf_counter()
                step_fn()
                sync()
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            proto.write(json.dumps({"times": times, "peak_mem_GiB": peak}) + "\n")
        elif cmd["cmd"] == "profile":
            table = _profile_table(step_fn, cmd["steps"], cmd.get("rows", 12))
            proto.write(json.dumps({"table": table}) + "\n")
        else:
            proto.write(json.dumps({"error": f"unknown command {cmd['cmd']!r}"}) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# vqforge worker
# ---------------------------------------------------------------------------------------------------------------

def vqforge_worker(args) -> None:
    proto = _quiet_import_stdout()
    import copy

    import torch

    torch.set_num_threads(args.threads)
    from vqforge.config import parse_config
    from vqforge.losses.objective import VQGANObjective
    from vqforge.losses.perceptual import LPIPS
    from vqforge.train.build import build_run

    spec = json.loads(Path(args.spec).read_text())
    raw = case_config(args.case, spec.get("overrides"))
    cfg = parse_config(raw)
    work = Path(args.work)
    run = build_run(cfg, work / "vqforge_run")
    trainer = run.trainer
    gan = args.case.endswith("-gan")
    if gan:  # the full objective: LPIPS on, with the stand-in backbone
        loss_cfg = copy.deepcopy(cfg.loss)
        loss_cfg.perceptual_weight = 1.0
        trainer.objective = VQGANObjective(loss_cfg, LPIPS(standin_vgg16_state())).to(trainer.device)
        if trainer.cfg.channels_last:  # as build_run converts the objective it builds
            trainer.objective.to(memory_format=torch.channels_last)
    batch = torch.load(work / "batch.pt")  # (B, H, W, C) uint8
    fixed = batch[:, None]  # (B, D=1, H, W, C), the train stream's layout

    class Fixed:
        def __iter__(self):
            return self

        def __next__(self):
            return fixed

    trainer.stream = Fixed()
    # the reference starts from these weights
    torch.save({"model": trainer.raw_model.state_dict(),
                "discriminator": (getattr(trainer.discriminator, "module", trainer.discriminator).state_dict()
                                  if trainer.discriminator is not None else None)}, work / "init_weights.pt")
    info = {"side": "vqforge", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "variant": cfg.model.variant, "batch": cfg.data.batch_size,
            "compile": bool(getattr(trainer.forward, "active", False)), "channels_last": trainer.cfg.channels_last,
            "fused_optimizer": bool(trainer.opt_g.param_groups[0].get("fused")),
            "gen_params": sum(p.numel() for p in trainer.gen_params),
            "disc_params": sum(p.numel() for p in trainer.disc_params)}
    _serve(proto, trainer.train_step, info)
    run.logger.close()


# ---------------------------------------------------------------------------------------------------------------
# reference (taming-transformers) worker: runs in the reference's own environment
# ---------------------------------------------------------------------------------------------------------------

def _install_torchvision_vgg16(state: dict) -> None:
    """A minimal `torchvision.models.vgg16` for taming's LPIPS: VGG16's feature stack with the stand-in weights."""
    import importlib.machinery
    import types

    import torch
    from torch import nn

    def vgg16(pretrained: bool = False, **_kw):
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        net = types.SimpleNamespace(features=nn.Sequential(*layers))
        with torch.no_grad():
            for k, t in state.items():
                _, idx, name = k.split(".")
                getattr(net.features[int(idx)], name).copy_(t)
        return net

    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tv.models = types.ModuleType("torchvision.models")
    tv.models.__spec__ = importlib.machinery.ModuleSpec("torchvision.models", None)
    tv.models.vgg16 = vgg16
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.models"] = tv.models


def taming_worker(args) -> None:
    proto = _quiet_import_stdout()
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    spec = json.loads(Path(args.spec).read_text())
    device = torch.device(spec.get("device", "cpu"))
    _install_torchvision_vgg16(standin_vgg16_state())
    import taming.modules.losses.lpips as taming_lpips
    from taming.models.vqgan import VQModel

    # taming's LPIPS loads its linear heads with torch.load from get_ckpt_path(); point that at the real heads
    taming_lpips.get_ckpt_path = lambda name, root, check=False: str(work / "lpips_lin.pt")

    m = spec["model"]
    gan = args.case.endswith("-gan")
    loss = spec["loss"]
    lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": {
        "disc_start": 0, "codebook_weight": loss["codebook_weight"], "pixelloss_weight": 1.0,
        "disc_num_layers": loss["disc_num_layers"], "disc_in_channels": 3, "disc_factor": loss["disc_factor"],
        "disc_weight": loss["disc_weight"], "perceptual_weight": 1.0, "use_actnorm": loss["disc_norm"] == "act",
        "disc_ndf": loss["disc_ndf"], "disc_loss": loss["disc_loss"]}}
    ddconfig = dict(m["ddconfig"], double_z=False, in_channels=3, out_ch=3)
    ddconfig = {k: ddconfig[k] for k in ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch",
                                         "ch_mult", "num_res_blocks", "attn_resolutions", "dropout")}
    model = VQModel(ddconfig, lossconfig, n_embed=m["n_embed"], embed_dim=m["embed_dim"])
    model.learning_rate = spec["lr"]
    init = torch.load(work / "init_weights.pt") if (work / "init_weights.pt").exists() else {"model": {},
                                                                                          "discriminator": None}
    own = model.state_dict()
    # the reference's quantizer may differ (EMA codebook on vqforge's side): its codebook is taken where shapes agree
    sd = {k: v for k, v in init["model"].items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if not k.startswith("loss.") and k not in sd]
    if init["discriminator"] is not None:
        sd.update({f"loss.discriminator.{k}": v for k, v in init["discriminator"].items()})
    model.load_state_dict(sd, strict=False)
    model.to(device).train()
    model.loss.perceptual_loss.eval()  # as taming builds it (LPIPS().eval()); train() above switched it back
    opt_ae, opt_disc = model.configure_optimizers()[0]
    x_img = (torch.load(work / "batch.pt").to(device).float() / 127.5 - 1.0)  # (B, H, W, C) in [-1, 1], as taming's datasets
    batch = {"image": x_img}
    ae_params = [p for g in opt_ae.param_groups for p in g["params"]]
    d_params = [p for g in opt_disc.param_groups for p in g["params"]]

    def toggle(active: list, frozen: list) -> None:  # Lightning's toggle_optimizer for two optimizers
        for p in frozen:
            p.requires_grad_(False)
        for p in active:
            p.requires_grad_(True)

    def gan_pair():
        for idx, opt, active, frozen in ((0, opt_ae, ae_params, d_params), (1, opt_disc, d_params, ae_params)):
            toggle(active, frozen)
            out = model.training_step(batch, 0, idx)
            opt.zero_grad()
            out.backward()
            opt.step()
        toggle(ae_params + d_params, [])

    def ae_step():
        x = model.get_input(batch, "image")
        xrec, qloss = model(x)
        total = torch.abs(x.contiguous() - xrec.contiguous()).mean() + loss["codebook_weight"] * qloss.mean()
        opt_ae.zero_grad()
        total.backward()
        opt_ae.step()

    import pytorch_lightning as pl
    import taming

    info = {"side": "taming", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "pytorch_lightning": pl.__version__, "taming": getattr(taming, "__file__", ""),
            "weights_not_shared": missing,
            "gen_params": sum(p.numel() for p in ae_params), "disc_params": sum(p.numel() for p in d_params)}
    _serve(proto, gan_pair if gan else ae_step, info, str(device))


# ---------------------------------------------------------------------------------------------------------------
# coordinator
# ---------------------------------------------------------------------------------------------------------------

def ensure_taming_env(python: str, torch_version: str) -> None:
    """Create the reference's virtual environment at the interpreter path `python` unless it exists."""
    if Path(python).exists():
        return
    venv = Path(python).parent.parent
    print(f"creating the reference environment {venv} (taming-transformers, pytorch-lightning 1.9.5) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={torch_version.split('+')[0]}"], check=True)
    subprocess.run(pip + ["--no-deps"] + TAMING_NO_DEPS, check=True)
    subprocess.run(pip + TAMING_DEPS, check=True)


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict):
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"{self.name} worker died:\n{err[-4000:]}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"{self.name} worker: {msg['error']}")
        return msg

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - a dead worker is reported by the caller already
            self.proc.kill()


def prepare_inputs(work: Path, batch_size: int) -> None:
    """The fixed batch (crops of the training sample photos) and LPIPS' heads as a torch file for the reference."""
    import torch
    from safetensors.torch import load_file

    from vqforge.config import parse_config
    from vqforge.data import build_train_stream

    cfg = parse_config({"model": TINY_MODEL, "data": {"source": "sample_photos", "resolution": 64, "resize": 128,
                                                      "batch_size": batch_size}, "train": {"device": "cpu"}})
    stream = build_train_stream(cfg.data, 0, 0, 1)
    batch = next(iter(stream))  # (B, D, H, W, C) uint8
    torch.save(torch.as_tensor(batch)[:, 0].contiguous(), work / "batch.pt")
    from vqforge.losses.perceptual import LPIPS_LIN_PATH

    torch.save(load_file(str(LPIPS_LIN_PATH)), work / "lpips_lin.pt")


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def run_case(case: str, args, taming_python: str) -> dict:
    import torch

    from vqforge.config import parse_config

    overrides = dict(args.set)
    if args.compile:
        overrides["train.compile"] = True
    if args.channels_last is not None:
        overrides["train.channels_last"] = args.channels_last
    raw = case_config(case, overrides)
    cfg = parse_config(raw)
    with tempfile.TemporaryDirectory(prefix="vqforge-vs-taming-") as tmp:
        work = Path(tmp)
        prepare_inputs(work, cfg.data.batch_size)
        spec = {"overrides": overrides, "model": raw["model"], "lr": cfg.train.lr,
                "loss": {k: getattr(cfg.loss, k) for k in ("codebook_weight", "disc_num_layers", "disc_factor",
                                                             "disc_weight", "disc_norm", "disc_ndf", "disc_loss")}}
        (work / "spec.json").write_text(json.dumps(spec))
        common = [__file__, "--case", case, "--work", str(work), "--spec", str(work / "spec.json"),
                  "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        load_before = os.getloadavg()[0]
        vq = Worker("vqforge", [sys.executable] + common + ["--worker", "vqforge"], env)  # writes init_weights.pt
        ref_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        ref = Worker("taming", [taming_python] + common + ["--worker", "taming"], ref_env)
        try:
            for w in (ref, vq):
                w.ask(cmd="run", steps=args.warmup)
            ratios, t_ref, t_vq = [], [], []
            for b in range(args.blocks):
                order = (ref, vq) if b % 4 in (0, 3) else (vq, ref)  # ABBA
                res = {w.name: w.ask(cmd="run", steps=args.block_steps)["times"] for w in order}
                t_ref += res["taming"]
                t_vq += res["vqforge"]
                ratios.append(statistics.fmean(res["vqforge"]) / statistics.fmean(res["taming"]))
            profiles = {}
            if args.profile_steps > 0:
                for w in (ref, vq):
                    profiles[w.name] = w.ask(cmd="profile", steps=args.profile_steps, rows=args.profile_rows)["table"]
        finally:
            ref.close()
            vq.close()
        load_after = os.getloadavg()[0]
    q1, med, q3 = _quantiles(ratios)
    return {"case": case, "batch": cfg.data.batch_size, "gan": case.endswith("-gan"), "overrides": overrides,
            "ratio_median": med, "ratio_q1": q1, "ratio_q3": q3, "ratios": ratios,
            "taming_step_s_median": statistics.median(t_ref), "vqforge_step_s_median": statistics.median(t_vq),
            "load_before": load_before, "load_after": load_after, "taming_info": ref.info, "vqforge_info": vq.info,
            "profiles": profiles, "torch": torch.__version__}


TARGETS = {"gan": 0.50, "ae": 0.80}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--blocks", type=int, default=8, help="alternating blocks per case")
    ap.add_argument("--block-steps", type=int, default=3, help="steps per block")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side before the blocks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=3, help="profiled steps per side (0: no profile)")
    ap.add_argument("--profile-rows", type=int, default=12)
    ap.add_argument("--taming-python", default=DEFAULT_TAMING_PYTHON,
                    help="interpreter of the reference's environment (created when missing)")
    ap.add_argument("--compile", action="store_true", help="vqforge side: train.compile true")
    ap.add_argument("--channels-last", dest="channels_last", default=None, type=lambda s: s.lower() in ("1", "true"),
                    metavar="BOOL", help="vqforge side: train.channels_last")
    ap.add_argument("--set", action="append", default=[], type=lambda s: (s.split("=", 1)[0], json.loads(s.split("=", 1)[1])),
                    metavar="KEY=JSON", help="vqforge side: override a native config key (value as JSON)")
    ap.add_argument("--json", metavar="OUT", help="also write every result as JSON")
    # worker mode (internal)
    ap.add_argument("--worker", choices=("vqforge", "taming"), help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "vqforge":
        vqforge_worker(args)
        return 0
    if args.worker == "taming":
        taming_worker(args)
        return 0

    import torch

    torch.set_num_threads(args.threads)
    ensure_taming_env(args.taming_python, torch.__version__)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs; {args.blocks} blocks × "
          f"{args.block_steps} steps per side and case after {args.warmup} warm-up steps; reference: "
          f"{args.taming_python}", flush=True)
    results = []
    for case in args.cases:
        t0 = time.perf_counter()
        r = run_case(case, args, args.taming_python)
        results.append(r)
        kind = "gan" if r["gan"] else "ae"
        ok = "met" if r["ratio_median"] <= TARGETS[kind] else "NOT MET"
        print(f"{case:<9} batch {r['batch']}: vqforge {r['vqforge_step_s_median']:.3f} s, taming "
              f"{r['taming_step_s_median']:.3f} s per step; ratio median {r['ratio_median']:.3f} "
              f"(IQR {r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}, {len(r['ratios'])} blocks), target <= "
              f"{TARGETS[kind]:.2f}: {ok}; load {r['load_before']:.2f} -> {r['load_after']:.2f}; "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        vi = r["vqforge_info"]
        print(f"          vqforge: {vi['variant']}, compile {vi['compile']}, channels_last {vi['channels_last']}, "
              f"fused optimizer {vi['fused_optimizer']}; params {vi['gen_params']:,} + disc {vi['disc_params']:,} "
              f"(reference {r['taming_info']['gen_params']:,} + {r['taming_info']['disc_params']:,})")
        if r["taming_info"].get("weights_not_shared"):
            print(f"          reference keeps its own init for: {', '.join(r['taming_info']['weights_not_shared'])}")
    print()
    print(f"{'case':<9} {'batch':>5} {'taming s':>9} {'vqforge s':>9} {'ratio':>6} {'IQR':>13} {'target':>6}  load")
    for r in results:
        kind = "gan" if r["gan"] else "ae"
        print(f"{r['case']:<9} {r['batch']:>5} {r['taming_step_s_median']:>9.3f} {r['vqforge_step_s_median']:>9.3f} "
              f"{r['ratio_median']:>6.3f} {r['ratio_q1']:>6.3f}-{r['ratio_q3']:<6.3f} {TARGETS[kind]:>6.2f}  "
              f"{r['load_before']:.2f}->{r['load_after']:.2f}")
    print("ratio: vqforge / taming mean step time per alternating block, median and IQR over blocks; step times are "
          "medians (GAN cases: one generator + discriminator step pair)")
    for r in results:
        for side, table in r["profiles"].items():
            print(f"\n== profile {r['case']} {side} ({args.profile_steps} steps, top ops by self CPU time)")
            print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
