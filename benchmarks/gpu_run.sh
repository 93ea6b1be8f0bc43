#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md, in parts that each finish well within 10 minutes on
# one H100, so that a short GPU session can run them all. Needs torch, triton and transformers
# (no install step: the package is used from src/).
#
#   bash benchmarks/gpu_run.sh OUTDIR checks    # versions, GPU tests (compiled kernels), smoke timings
#   bash benchmarks/gpu_run.sh OUTDIR kernels   # 2:4 kernels vs dense and cuSPARSELt, tuning sweep
#   bash benchmarks/gpu_run.sh OUTDIR e2e       # sparsekit bench --random llama-3-8b, batch 1 and 16
#   bash benchmarks/gpu_run.sh OUTDIR prune     # Wanda / Wanda offloaded / SparseGPT on Llama-3-8B shapes
#
# Each part writes its logs and JSON into OUTDIR and prints them.
set -uo pipefail
out=${1:?usage: gpu_run.sh OUTDIR checks|kernels|e2e|prune}
part=${2:?usage: gpu_run.sh OUTDIR checks|kernels|e2e|prune}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"

case $part in
  checks)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    python -c "import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, \
triton.__version__, transformers.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
    python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_obs_kernel.py \
      tests/test_prune_math.py tests/test_stats.py tests/test_bench.py 2>&1 | tee "$out/pytest.log"
    python benchmarks/prune_speed.py --model llama-3-1b --method sparsegpt --nsamples 16 \
      --seqlen 2048 --device cuda 2>&1 | tee "$out/smoke.jsonl"
    ;;
  kernels)
    python benchmarks/kernels.py --tune --out "$out/kernels.json" 2>&1 | tee "$out/kernels.log"
    ;;
  e2e)
    for b in 1 16; do
      python -m sparsekit bench --random llama-3-8b --batch $b --prompt 512 --new 128 --json \
        2>&1 | tee "$out/bench_b$b.json"
    done
    ;;
  prune)
    for args in "--method wanda" "--method wanda --offload" "--method sparsegpt" \
                "--method sparsegpt --pattern 2:4"; do
      python benchmarks/prune_speed.py --model llama-3-8b $args --device cuda 2>&1 | tee -a "$out/prune.jsonl"
    done
    ;;
  *)
    echo "unknown part $part: use checks, kernels, e2e or prune" >&2
    exit 2
    ;;
esac
