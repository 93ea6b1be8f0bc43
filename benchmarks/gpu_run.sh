#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in two calls of under 8 minutes each on one H100/H200.
# Every step runs under its own `timeout`, so a slow step cannot take the call down with it;
# each writes its log/JSON into OUTDIR (at most 4 files per call) and prints it. Needs torch,
# triton and transformers for `python3` (no install step: the package is used from src/).
#
#   bash benchmarks/gpu_run.sh OUTDIR a   # versions, GPU tests, kernel sweep + DISPATCH tables
#   bash benchmarks/gpu_run.sh OUTDIR b   # sparsekit bench --random llama-3-8b: batch 1, 16,
#                                         #   and batch 1 with cuSPARSELt copies for prefill
#   bash benchmarks/gpu_run.sh OUTDIR prune   # (separate) pruning speed on Llama-3-8B shapes
set -uo pipefail
out=${1:?usage: gpu_run.sh OUTDIR a|b|prune}
part=${2:?usage: gpu_run.sh OUTDIR a|b|prune}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/sparsekit-triton-cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/sparsekit-inductor-cache}
mkdir -p "$out"
py=python3

step() {  # step SECONDS LOGFILE CMD...: run CMD under a timeout, append to LOGFILE, say how it ended
  local secs=$1 log=$2; shift 2
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "[gpu_run] '$*' ended with $rc after $((SECONDS - t0)) s (limit $secs s)" | tee -a "$log"
}

case $part in
  a)
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
      $py -c "import sys, torch, triton, transformers; print(sys.version.split()[0], torch.__version__, \
triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
    } 2>&1 | tee "$out/gpu.txt"
    step 120 "$out/pytest.log" $py -m pytest -q -p no:cacheprovider -x tests/kernels tests/runtime \
      tests/workflows/test_bench.py
    # bf16 sweep at M = 1..8192, then the chosen configs in fp16; prints the DISPATCH tables
    step 330 "$out/kernels.log" $py benchmarks/kernel_speed.py --tune --budget 260 \
      --out "$out/kernels.json"
    ;;
  b)
    for b in 1 16; do
      log=/tmp/sparsekit-bench-b$b.log
      rm -f "$log"
      step 190 "$log" $py -m sparsekit bench --random llama-3-8b --batch $b --prompt 512 --new 128 \
        --json
      cat "$log" >> "$out/e2e.log"
      $py - "$log" "$out/bench_b$b.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the result is the JSON block printed last (indent 2)
start = text.rfind("\n{\n") + 1
try:
    json.dump(json.loads(text[start:text.index("\n}\n", start) + 2]), open(sys.argv[2], "w"), indent=1)
except ValueError as e:
    print(f"[gpu_run] no JSON result in {sys.argv[1]}: {e}")
EOF
    done
    # prefill with cuSPARSELt copies (decode is the same as above: eager, 1 step, no compile)
    step 70 "$out/e2e.log" $py - "$out/bench_b1_cusparselt.json" <<'EOF'
import json, sys
import torch
from sparsekit.workflows.bench import random_model, run_bench
model = random_model("llama-3-8b", dtype=torch.bfloat16, device="cuda")
res = run_bench(model, batch=1, prompt_len=512, new_tokens=2, device="cuda", cusparselt=True,
                compile=False, cuda_graph=False)
print(json.dumps(res, indent=1))
json.dump(res, open(sys.argv[1], "w"), indent=1)
EOF
    ;;
  prune)
    for args in "--method wanda" "--method wanda --offload" "--method sparsegpt" \
                "--method sparsegpt --pattern 2:4"; do
      step 150 "$out/prune.jsonl" $py benchmarks/prune_speed.py --model llama-3-8b $args --device cuda
    done
    ;;
  *)
    echo "unknown part $part: use a, b or prune" >&2
    exit 2
    ;;
esac
