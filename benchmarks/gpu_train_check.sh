#!/usr/bin/env bash
# GPU checks of the training stage, sized for a few minutes on one GPU:
#  1. training throughput, reference-style vs ours (bench_train.py), ResNeXt-50 at 112 px;
#  2. a real `train` run on CUDA (AMP + channels_last) on a tiny synthetic cache, then `evaluate`;
#  3. the same through torchrun with 1 process (NCCL DDP path);
#  4. optional: ours with torch.compile (GPU_CHECK_COMPILE=1).
# Usage: bash benchmarks/gpu_train_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_train_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_bf16_supported())"

echo "== 1. training throughput (resnext50_32x4d, 112 px, 20 frames/clip)"
timeout 240 $PY benchmarks/bench_train.py --json | tee "$OUT/bench_train_112.txt"
echo "== 1b. mobilenet_v2, 224 px"
timeout 120 $PY benchmarks/bench_train.py --backbone mobilenet_v2 --size 224 --json | tee "$OUT/bench_train_mnv2_224.txt"

echo "== 2. train + evaluate on CUDA (synthetic cache, resnext50 from scratch, 64 px)"
$PY -c "
from pathlib import Path
from tests.cache_helpers import make_synthetic_cache
make_synthetic_cache(Path('$OUT/cache'), n_real=24, n_fake=24, frames=8, size=64)
"
timeout 180 $PY -m deepfake_detector train "$OUT/cache" --name gpu --runs-dir "$OUT/runs" --no-pretrained \
  --epochs 3 --batch-size 8 --lr 1e-4 --seq-len 8 --workers 4 --device cuda --hidden-size 256 2>&1 | tail -25
timeout 60 $PY -m deepfake_detector evaluate "$OUT/runs/gpu/best.pt" "$OUT/cache" --split all --out "$OUT/eval" 2>&1 | tail -5
cp "$OUT/runs/gpu/metrics.csv" "$OUT/metrics_gpu.csv" 2>/dev/null || true

echo "== 3. torchrun, 1 process, NCCL"
timeout 180 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m deepfake_detector train "$OUT/cache" \
  --name ddp --runs-dir "$OUT/runs" --backbone tiny --no-pretrained --hidden-size 32 --epochs 2 --batch-size 8 \
  --lr 3e-3 --seq-len 8 --workers 2 2>&1 | tail -6
ls "$OUT/runs/ddp"

if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then
  echo "== 4. ours + torch.compile"
  timeout 200 $PY benchmarks/bench_train.py --compile --json | tee "$OUT/bench_train_compile.txt"
fi
