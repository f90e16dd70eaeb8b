#!/usr/bin/env bash
# GPU check for vqforge, for a session that is lent a GPU machine. Runs in under 5 minutes and prints numbers.
#
#   bench/gpu_check.sh [OUT_DIR]          (from anywhere; OUT_DIR defaults to $OUT, else /tmp/vqforge_gpu_check)
#
# 1. Single-GPU training throughput of the taming f16 model (VQModel: ch 128, ch_mult [1,1,2,2,4], num_res_blocks
#    2, attn_resolutions [16], z_channels 256, n_embed 1024, embed_dim 256; PatchGAN 3 layers, ndf 64) at 256x256,
#    batch 8, full objective with LPIPS (stand-in VGG16 backbone) and the GAN on from step 0, on a fixed random
#    batch: vqforge fp32-eager, bf16-eager, bf16-compile (add fp32-compile with GC_CASES) and taming-transformers
#    fp32 on the same GPU in the same run (bench/gpu_throughput.py). Prints images/s, ms per step pair, peak GPU
#    memory, MFU (counted FLOPs / dense bf16 peak) and warm-up (compile) time per case. The reference needs
#    taming-transformers-rom1504 0.0.6, pytorch-lightning 1.9.5, torchmetrics 1.4.0, lightning-utilities,
#    omegaconf, antlr4-python3-runtime 4.9.3 (`pip wheel` builds it from its sdist), einops, setuptools<81 (for
#    pkg_resources), lightning-utilities, fsspec, requests (+ urllib3, idna, certifi, charset_normalizer's
#    py3-none-any wheel): carry their wheels in ./.whl/taming/ where the machine has no package index; they go to
#    $OUT_DIR/taming_site only, never onto vqforge's path. vqforge's own missing needs (PyAV on the lent GPU
#    machines) go as wheels in ./.whl/ (see the device README).
# 2. A 1-GPU torchrun run (`python -m torch.distributed.run --standalone --nproc_per_node=1 -m vqforge train`):
#    nccl process group, DDP, a few steps with GAN on, checkpoint, validation; then a resume of it by a few steps.
#    Prints its exit codes, the start-up line with the global batch, and the trainer's "finished" line.
#
# Environment: uses `python3` (or $PYTHON) when it imports torch; otherwise makes a venv in $OUT_DIR/venv and
# pip-installs torch there (needs a package index). vqforge itself runs from this checkout's src/ (no install).
# Its other needs (numpy pyyaml safetensors pillow av tqdm, plus scikit-image for sample photos) are checked first;
# a missing one is installed from wheels in ./.whl if that folder exists (see the device README: carry it), else
# with pip from the index, else the script stops and says which are missing.
# Knobs for a smoke test elsewhere: GC_DEVICE (cuda), GC_RES (256), GC_BATCH (8), GC_STEPS (10), GC_WARMUP (3),
# GC_PRECISION (bf16, section 2), GC_CASES, GC_TINY (any value: a tiny network, for dry runs), GC_THROUGHPUT_TIMEOUT
# (300 s), GC_RUN_STEPS (6), GC_TORCHRUN_TIMEOUT (240 s).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-/tmp/vqforge_gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

echo "== environment"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch is not importable by $PY: making a venv in $OUT_DIR/venv"
    python3 -m venv "$OUT_DIR/venv"
    PY="$OUT_DIR/venv/bin/python"
    "$PY" -m pip install -q torch
fi

missing="$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "yaml": "pyyaml", "safetensors": "safetensors", "PIL": "pillow", "av": "av", "tqdm": "tqdm"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)"
if [ -n "$missing" ]; then
    echo "missing Python packages: $missing"
    SITE="$OUT_DIR/site"
    if [ -d "$REPO/.whl" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$REPO"/.whl/*.whl
    elif ! "$PY" -m pip install -q --target "$SITE" $missing; then
        echo "error: cannot install $missing (no package index?). Download their wheels into $REPO/.whl" \
             "(see the device README) and carry .whl." >&2
        exit 1
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import os, platform, torch
import vqforge
print(f"python {platform.python_version()}, torch {torch.__version__}, vqforge from {os.path.dirname(vqforge.__file__)}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}; nccl: {torch.distributed.is_nccl_available()}")
else:
    print("no CUDA device visible (GC_DEVICE decides where the check runs)")
EOF

# ---------------------------------------------------------------------------------------------------------------
echo "== 1. single-GPU training throughput, taming f16 at ${GC_RES:-256}x${GC_RES:-256}, batch ${GC_BATCH:-8}: vqforge fp32/bf16 x eager/compile, taming-transformers fp32"
# the reference (taming-transformers + pytorch-lightning 1.9.5 and their small pure-Python needs) goes into its own
# folder, from the carried wheels (./.whl, see the header) or the package index; it never enters vqforge's path
TAMING_SITE="$OUT_DIR/taming_site"
if ! PYTHONPATH="$TAMING_SITE" "$PY" -c "import taming, pytorch_lightning" 2>/dev/null; then
    if [ -d "$REPO/.whl/taming" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$TAMING_SITE" "$REPO"/.whl/taming/*.whl || true
    else
        "$PY" -m pip install -q --no-deps --target "$TAMING_SITE" taming-transformers-rom1504==0.0.6 \
            pytorch-lightning==1.9.5 torchmetrics==1.4.0 lightning-utilities omegaconf antlr4-python3-runtime==4.9.3 \
            einops "setuptools<81" requests || true
    fi
fi
CASES="${GC_CASES:-fp32-eager bf16-eager bf16-compile taming-fp32}"
# shellcheck disable=SC2086
if ! timeout "${GC_THROUGHPUT_TIMEOUT:-300}" "$PY" "$REPO/bench/gpu_throughput.py" --device "${GC_DEVICE:-cuda}" \
        --res "${GC_RES:-256}" --batch "${GC_BATCH:-8}" --steps "${GC_STEPS:-10}" --warmup "${GC_WARMUP:-3}" \
        --cases $CASES --taming-path "$TAMING_SITE:$PYTHONPATH" --json "$OUT_DIR/throughput.json" \
        ${GC_TINY:+--tiny} > "$OUT_DIR/throughput.log" 2>&1; then
    echo "throughput check failed or timed out (a failed case is listed in the table); the end of its log:" >&2
    tail -n 30 "$OUT_DIR/throughput.log" >&2
fi
sed -n '/^case /,$p' "$OUT_DIR/throughput.log"
# ---------------------------------------------------------------------------------------------------------------
echo "== 2. 1-GPU torchrun run (nccl + DDP), then a resume"
RUN_STEPS="${GC_RUN_STEPS:-6}"
OUT_DIR="$OUT_DIR" RUN_STEPS="$RUN_STEPS" "$PY" - <<'EOF'
import os
from pathlib import Path

import yaml

out = Path(os.environ["OUT_DIR"])
res = int(os.environ.get("GC_RES", "256"))
steps = int(os.environ["RUN_STEPS"])
cfg = {
    "model": {"family": "taming", "variant": "VQModel", "n_embed": 1024, "embed_dim": 256,
              "ddconfig": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                           "z_channels": 256, "resolution": res, "dropout": 0.0}},
    "loss": {"perceptual_weight": 0.0, "use_gan": True, "disc_start": 2},
    "data": {"source": "sample_photos", "resolution": res, "batch_size": 4, "hflip": True},
    "train": {"num_steps": steps, "precision": os.environ.get("GC_PRECISION", "bf16"),
              "device": os.environ.get("GC_DEVICE", "cuda"), "save_interval": steps // 2,
              "validation_interval": steps // 2, "val_max_batches": 1, "dist_timeout_s": 120},
    "log": {"tensorboard": False, "progress": False, "every": 1},
}
(out / "torchrun.yaml").write_text(yaml.safe_dump(cfg))
EOF
rm -rf "$OUT_DIR/torchrun_run" "$OUT_DIR/torchrun_resumed"
TR=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m vqforge train "$OUT_DIR/torchrun.yaml")
TIMEOUT="${GC_TORCHRUN_TIMEOUT:-240}"
set +e
t0=$(date +%s)
timeout "$TIMEOUT" "${TR[@]}" --out "$OUT_DIR/torchrun_run" > "$OUT_DIR/torchrun.log" 2>&1
rc1=$?
t1=$(date +%s)
half=$(printf "step_%08d" $((RUN_STEPS / 2)))
timeout "$TIMEOUT" "${TR[@]}" --out "$OUT_DIR/torchrun_resumed" \
    --resume "$OUT_DIR/torchrun_run/checkpoints/$half" > "$OUT_DIR/torchrun_resume.log" 2>&1
rc2=$?
t2=$(date +%s)
set -e
echo "torchrun run: exit $rc1 in $((t1 - t0)) s; resume from $half: exit $rc2 in $((t2 - t1)) s"
grep -h "derived at start" "$OUT_DIR/torchrun_run/config.yaml" || true
grep -h "\[train\] step\|\[val\]\|^finished\|resumed from" "$OUT_DIR/torchrun.log" "$OUT_DIR/torchrun_resume.log" || true
if [ "$rc1" -ne 0 ] || [ "$rc2" -ne 0 ]; then
    echo "torchrun failed; the end of its logs:" >&2
    tail -n 40 "$OUT_DIR/torchrun.log" "$OUT_DIR/torchrun_resume.log" >&2
    exit 1
fi
# the resumed run must end on the same weights as the straight one (same per-rank RNG, data position, optimizer)
"$PY" - "$OUT_DIR" "$RUN_STEPS" <<'EOF'
import sys
from pathlib import Path

from safetensors.torch import load_file

out, steps = Path(sys.argv[1]), int(sys.argv[2])
name = f"checkpoints/step_{steps:08d}/model.safetensors"
a, b = load_file(str(out / "torchrun_run" / name)), load_file(str(out / "torchrun_resumed" / name))
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"resume vs straight at step {steps}: max |dw| = {worst:.3g} "
      "(0 = bitwise; cuDNN may pick non-deterministic kernels, so tiny values are possible on GPU)")
EOF
echo "== done: numbers in $OUT_DIR/throughput.json, logs in $OUT_DIR/torchrun*.log"
