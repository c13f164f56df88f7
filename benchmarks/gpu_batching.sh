#!/usr/bin/env bash
# Every GPU row of the batching benchmark in one command (issue 10): images per hour against K at the default
# budgets for the built-in 64 px generator, a paper-size 256 px and a config-f 1024 px generator (random
# weights), peak memory per image and TFLOP/s against the device's peak; FLOPs per image at 1024 px.
#   bash benchmarks/gpu_batching.sh [PEAK_TFLOPS]      # e.g. 989 for an H200's dense bf16, 67 for its fp32
set -euo pipefail
cd "$(dirname "$0")/.."
PEAK=${1:-67}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
B=".venv/bin/python benchmarks/batching.py --device cuda --peak-tflops $PEAK --steps 20"
$B --checkpoint builtin --ks 1 8 32 128 512 --out "$OUT/batching-gpu-64px.json"
$B --checkpoint paper256 --ks 1 4 16 64 --out "$OUT/batching-gpu-256px.json"
$B --checkpoint config-f-1024 --ks 1 2 4 8 16 --out "$OUT/batching-gpu-1024px.json"
.venv/bin/python benchmarks/batching.py --device cuda --flops --checkpoint config-f-1024 --out "$OUT/flops-1024px.json"
# bf16 autocast (TuneConfig.precision) against fp32 at 1024 px, where tensor cores could pay
$B --checkpoint config-f-1024 --methods gani "gani[precision=bf16]" pti "pti[precision=bf16]" --ks 1 4 16 \
    --out "$OUT/batching-gpu-1024px-bf16.json"
