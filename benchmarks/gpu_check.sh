#!/usr/bin/env bash
# One GPU check, sized to finish in under 10 minutes on one GPU, ending with ONE table:
#  1. training throughput, reference-style (fp32 NCHW b4) vs ours (AMP, channels_last, uint8 input,
#     b16 = train's default, also b32 and torch.compile), ResNeXt-50 at 112 px, 20 frames/clip;
#  2. inference throughput (model stage) at 112 and 224 px: reference-style vs ours vs ours +compile,
#     with the bf16-vs-CPU-fp32 agreement check;
#  3. a real `train` (AMP + channels_last) and `evaluate` on CUDA on a tiny synthetic cache;
#  4. the same `train` through torchrun with 1 process: the NCCL DDP path;
#  5. the summary table (python -m benchmarks.run_all --summarize), also written as summary.json.
# Runs from the source tree (PYTHONPATH=.), so it needs no install on a machine that has the deps.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]        (CPU smoke run: GPU_CHECK_DEVICE=cpu)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEV=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
t0=$SECONDS
status=0
step() { echo; echo "== $1  (t=$((SECONDS - t0)) s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if ! $PY -c "import torch" 2>/dev/null; then
  echo "error: '$PY' cannot import torch; set PYTHON to the interpreter of the project's environment" \
       "(e.g. PYTHON=.venv/bin/python)" >&2
  exit 2
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"

if [ "$DEV" = cuda ] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device here (GPU_CHECK_DEVICE=cpu runs a short smoke test of this script instead)" >&2
  exit 2
fi
if [ "$DEV" = cpu ]; then  # smoke run of the script itself: tiny models, a few steps
  TRAIN_ARGS=(--device cpu --backbone tiny --hidden 16 --steps 1)
  PRED_ARGS=(--device cpu --backbone tiny --clips 8)
  BIG=tiny
else
  TRAIN_ARGS=(--more-batches 32 --compile)
  PRED_ARGS=(--clips 256 --batch-size 32)
  BIG=resnext50_32x4d
fi

step "1. training throughput"
timeout 270 $PY -m benchmarks.bench_train "${TRAIN_ARGS[@]}" --json-out "$OUT/train_112.json" || status=1

for size in 112 224; do
  step "2. inference throughput, $size px"
  timeout 150 $PY -m benchmarks.bench_predict "${PRED_ARGS[@]}" --size "$size" --compile \
    --json "$OUT/predict_model_$size.json" || status=1
done

step "3. train + evaluate on $DEV (synthetic cache, $BIG from scratch, 64 px)"
$PY -c "
from pathlib import Path
from tests.cache_helpers import make_synthetic_cache
make_synthetic_cache(Path('$OUT/cache'), n_real=24, n_fake=24, frames=8, size=64)
" || status=1
timeout 120 $PY -m deepfake_detector train "$OUT/cache" --name gpu --runs-dir "$OUT/runs" --no-pretrained \
  --backbone $BIG --epochs 2 --batch-size 8 --lr 1e-4 --seq-len 8 --workers 4 --device "$DEV" \
  --hidden-size 256 2>&1 | tail -8 || status=1
timeout 60 $PY -m deepfake_detector evaluate "$OUT/runs/gpu/best.pt" "$OUT/cache" --split all \
  --out "$OUT/eval" 2>&1 | tail -4 || status=1

if [ "$DEV" = cuda ]; then
  step "4. torchrun, 1 process, NCCL"
  timeout 120 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m deepfake_detector train \
    "$OUT/cache" --name ddp --runs-dir "$OUT/runs" --backbone tiny --no-pretrained --hidden-size 32 \
    --epochs 2 --batch-size 8 --lr 3e-3 --seq-len 8 --workers 2 2>&1 | tail -4 || status=1
  if [ -f "$OUT/runs/ddp/last.pt" ] && [ -f "$OUT/runs/ddp/metrics.csv" ]; then
    echo "NCCL DDP run: ok ($(($(wc -l < "$OUT/runs/ddp/metrics.csv") - 1)) epochs in metrics.csv)"
  else
    echo "NCCL DDP run: FAILED (no last.pt/metrics.csv in $OUT/runs/ddp)"; status=1
  fi
fi

step "5. summary"
$PY -m benchmarks.run_all --summarize "$OUT" || status=1
echo "total $((SECONDS - t0)) s, exit $status"
exit $status
