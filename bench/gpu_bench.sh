#!/usr/bin/env bash
# Issue 23's prepared GPU run, one command: train-step throughput (Lite0 + ResNet-101, eager +
# compiled, the pre-issue-23 step interleaved), the input pipeline (real JPEGs, CPU and nvJPEG
# decoding, end-to-end epoch vs synthetic step) and the step's host syncs, all at 224 px bf16.
# Writes bench/results/<name>/ (JSON + the printed reports + the environment).
#
#   bash bench/gpu_bench.sh [name]        # name default: <gpu>-<date>, e.g. h100-2026-12-06
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
name=${1:-$($PY -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())")-$(date +%F)}
out=bench/results/$name
mkdir -p "$out"
{ nvidia-smi || true; $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; nproc; } > "$out/env.txt" 2>&1
$PY bench/train_throughput.py --image-size 224 --batch-size 128 --precision bf16 --channels-last \
  --modes eager,compiled --before --results-name "$name" 2>&1 | tee "$out/train_throughput.txt"
$PY bench/input_pipeline.py --image-size 224 --batch-size 128 --workers 4,8,16 --arch resnet101 \
  --precision bf16 --channels-last --num-images 1024 --steps 10 --repeats 3 --results-name "$name" 2>&1 \
  | tee "$out/input_pipeline.txt"
$PY bench/step_syncs.py --steps 30 > "$out/step_syncs.json"
echo "results in $out"
