#!/usr/bin/env bash
# Check fastloss on a machine with an NVIDIA GPU; writes everything into DIR.
#
#   bash bench/gpu_check.sh DIR        (from the repository root)
#
# 1. installs the package (editable, with the cuda and test extras when the
#    registry is reachable, else from what is already installed, offline);
# 2. runs the CUDA tests on the real device (pytest tests -k cuda with
#    NUMBA_ENABLE_CUDASIM=0);
# 3. compiles every kernel signature those tests compiled, for the device's own
#    compute capability, with ptxas -v (python -m fastloss cuda-check) ->
#    DIR/cuda-kernels.md: registers, spills, stack, shared memory;
# 4. times every loss at n = 1e8 float32 with backend="cuda" against the
#    device's copy bandwidth (bench/gpu_bench.py) -> DIR/gpu_bench.md.
# A failing step is logged and the next one still runs; the exit status is
# non-zero if any step failed.  Each step has a time limit; the whole script
# takes a few minutes (mostly kernel compilation and making 1e8-element inputs).
set -euo pipefail

DIR=${1:?usage: bash bench/gpu_check.sh DIR}
N=${FASTLOSS_GPU_N:-100000000}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.."
exec > >(tee -a "$DIR/gpu_check.log") 2>&1
# the real device, not the simulator: "0", not unset, since tests/conftest.py
# turns the simulator on when the variable is absent
export NUMBA_ENABLE_CUDASIM=0
PY=${PYTHON:-python3}
failed=()

step() {  # step NAME SECONDS CMD...: run, log, remember a failure, go on
    local name=$1 limit=$2; shift 2
    echo "=== $name: $* (limit ${limit}s) $(date -u +%H:%M:%S)"
    if timeout "$limit" "$@"; then echo "=== $name: ok"; else
        local rc=$?; echo "=== $name: FAILED (exit $rc)"; failed+=("$name"); fi
}

echo "=== gpu_check $(date -u) in $PWD, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi || echo "(nvidia-smi failed)"
$PY --version

# Offline first (the GPU machine may reach no registry): extras that are
# already installed satisfy pip without the index; then with the index; then
# the bare package over whatever numba-cuda/pytest the machine already has.
export PIP_RETRIES=1 PIP_DEFAULT_TIMEOUT=15 PIP_DISABLE_PIP_VERSION_CHECK=1
step install 150 bash -c "$PY -m pip install --no-build-isolation -e '.[cuda,cuda-check,test]' \
    || $PY -m pip install -e '.[cuda,cuda-check,test]' \
    || $PY -m pip install --no-build-isolation --no-deps -e ."
step info 45 $PY -m fastloss info
# (the kernels' compiled signatures are recorded for the compile check)
step cuda-tests 150 env FASTLOSS_RECORD_CUDA_LAUNCHES="$DIR/launches" \
     $PY -m pytest tests -k cuda -q -p no:cacheprovider -o addopts="" \
     --junitxml="$DIR/cuda-tests.xml"
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
step compile-check 120 $PY -m fastloss cuda-check "$DIR/launches" --cc "${CC:-90}" --jobs 4 \
     --report "$DIR/cuda-kernels.md" --json "$DIR/cuda-kernels.json"
step gpu-bench 200 $PY bench/gpu_bench.py --out "$DIR" --n "$N"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv || true

if ((${#failed[@]})); then echo "=== FAILED steps: ${failed[*]}"; exit 1; fi
echo "=== all steps ok; results in $DIR/gpu_bench.md"
