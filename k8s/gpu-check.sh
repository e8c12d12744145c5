#!/usr/bin/env bash
# gpu-check: run a short GPU sweep on this machine and print what it measured.
#
# Checks, in order, and stops with "gpu-check: FAIL: ..." (exit 1) at the first that fails:
#   1. nvidia-smi exists and talks to the driver;
#   2. PyTorch sees a GPU (torch.cuda.is_available()) and can run a kernel on it, and
#      gradtune with its dependencies is importable;
#   3. a sweep of fractional-GPU trials runs to the end (local Ray, MLflow in a temp dir):
#        python -m gradtune sweep sweeps/quickstart.yaml --set resources.gpu=0.5 \
#          --set training.steps=50 --set training.device=cuda --trials 4
#   4. every trial ended without error, and the GPU was used while the sweep ran.
# Then it prints the GPUs, the sweep's wall time, trial outcomes, the best val_loss, and
# the peak GPU utilisation and memory sampled with nvidia-smi during the sweep.
#
# Usage (from anywhere; runs in the repository root):
#   k8s/gpu-check.sh [extra `gradtune sweep` arguments, e.g. --set search.max_concurrent=4]
# Environment: PYTHON (interpreter with gradtune installed; default: python, else python3),
#   GPU_SHARE (0.5), STEPS (50), TRIALS (4), KEEP=1 keeps the work directory.
set -euo pipefail

cd "$(dirname "$0")/.."
GPU_SHARE="${GPU_SHARE:-0.5}"
STEPS="${STEPS:-50}"
TRIALS="${TRIALS:-4}"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"

fail() { echo "gpu-check: FAIL: $*" >&2; exit 1; }

# 1. Driver.
command -v nvidia-smi >/dev/null 2>&1 \
    || fail "nvidia-smi not found: this machine has no NVIDIA driver (run this on a GPU node)"
gpus="$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1)" \
    || fail "nvidia-smi cannot talk to the driver: ${gpus}"
[ -n "${gpus}" ] || fail "nvidia-smi lists no GPU"
echo "== GPUs (index, name, memory, driver)"
echo "${gpus}" | sed 's/^/   /'

# 2. PyTorch.
[ -n "${PYTHON}" ] || fail "no python found; set PYTHON to the interpreter that has gradtune"
"${PYTHON}" - <<'EOF' || fail "PyTorch cannot use the GPU (see above); is this the CUDA build of torch?"
import sys
import time

import torch

if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}): "
             "torch.cuda.is_available() is False")
name = torch.cuda.get_device_name(0)
x = torch.randn(4096, 4096, device="cuda")
y = x @ x  # warm-up: CUDA context and cuBLAS handle
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(10):
    y = x @ x
torch.cuda.synchronize()
seconds = time.perf_counter() - start
tflops = 10 * 2 * 4096**3 / seconds / 1e12
print(f"== PyTorch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} visible GPU(s); GPU 0: {name}")
print(f"   fp32 4096x4096 matmul: {tflops:.1f} TFLOP/s")
EOF

"${PYTHON}" -c "import gradtune, mlflow, optuna, ray" 2>/dev/null || fail \
    "gradtune or its dependencies (ray, optuna, mlflow) are not importable by ${PYTHON}: pip install -e . first"

# 3. The sweep, with nvidia-smi sampling the GPUs in the background.
work="$(mktemp -d -t gradtune-gpu-check.XXXXXX)"
sampler=""
cleanup() {
    if [ -n "${sampler}" ]; then kill "${sampler}" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "gpu-check: kept ${work}"; else rm -rf "${work}"; fi
}
trap cleanup EXIT

baseline="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -n1)"
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 500 > "${work}/gpu.csv" 2>/dev/null &
sampler=$!

command=("${PYTHON}" -m gradtune sweep sweeps/quickstart.yaml
    --set "resources.gpu=${GPU_SHARE}" --set "training.steps=${STEPS}"
    --set training.device=cuda --trials "${TRIALS}"
    --tracking-uri "sqlite:///${work}/mlflow.db" --experiment gpu-check
    --storage "${work}/ray_results" "$@")
echo "== ${command[*]}"
start="$(date +%s.%N)"
set +e
"${command[@]}" 2>&1 | tee "${work}/sweep.log"
status="${PIPESTATUS[0]}"
set -e
end="$(date +%s.%N)"
kill "${sampler}" 2>/dev/null || true
wait "${sampler}" 2>/dev/null || true
sampler=""
[ "${status}" -eq 0 ] || fail "the sweep exited with status ${status} (log above)"

# 4. What it measured.
"${PYTHON}" - "${work}" "${start}" "${end}" "${baseline}" "${TRIALS}" "${GPU_SHARE}" <<'EOF' \
    || fail "the sweep did not do what a GPU sweep should (see above)"
import collections
import csv
import math
import sys

from mlflow.tracking import MlflowClient

work, start, end, baseline, trials, share = sys.argv[1:]
seconds = float(end) - float(start)
util, mem = collections.defaultdict(int), collections.defaultdict(int)
with open(f"{work}/gpu.csv") as f:
    for row in csv.reader(f):
        try:
            index, u, m = (int(v.strip()) for v in row)
        except ValueError:
            continue
        util[index] = max(util[index], u)
        mem[index] = max(mem[index], m)

client = MlflowClient(f"sqlite:///{work}/mlflow.db")
experiment = client.get_experiment_by_name("gpu-check")
runs = client.search_runs([experiment.experiment_id]) if experiment else []
children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
outcomes = collections.Counter(r.data.tags.get("gradtune.outcome", "?") for r in children)
losses = [r.data.metrics["val_loss"] for r in children
          if math.isfinite(r.data.metrics.get("val_loss", math.nan))]
nodes = {r.data.tags.get("gradtune.node_id") for r in children} - {None}

print("== gpu-check: measured")
print(f"   sweep wall time:     {seconds:.1f} s for {len(children)} trials "
      f"({share} GPU each, asked for {trials})")
print(f"   trial outcomes:      " + (", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
                                      or "none"))
print(f"   best val_loss:       {min(losses):.4g}" if losses else "   best val_loss:       n/a")
print(f"   Ray nodes used:      {len(nodes)}")
for index in sorted(util):
    print(f"   GPU {index}: peak utilisation {util[index]}%, "
          f"peak memory used {mem[index]} MiB (before the sweep: {baseline} MiB)")

problems = []
if len(children) != int(trials):
    problems.append(f"{len(children)} trials logged to MLflow, expected {trials}")
if outcomes.get("failed"):
    problems.append(f"{outcomes['failed']} trial(s) failed")
if not util:
    problems.append("nvidia-smi recorded no samples during the sweep")
elif max(mem.values()) <= int(baseline) and max(util.values()) == 0:
    problems.append("the GPU was idle during the sweep: trials did not run on it")
for p in problems:
    print(f"   problem: {p}")
sys.exit(1 if problems else 0)
EOF
echo "gpu-check: OK"
