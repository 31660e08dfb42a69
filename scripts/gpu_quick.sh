#!/usr/bin/env bash
# Quick GPU loop for the matrix-product kernels: the linear op tests against the CPU backend,
# their timing prints, and gpt2_124m training steps (twice each) for every OFT_GEMM_WGMMA value
# in QUICK_MODES (default "0 fwd all"), or for every comma-separated list of environment
# settings in QUICK_ENVS, e.g. QUICK_ENVS="OFT_GEMM_WGMMA=0,OFT_GEMM_WGMMA=fwd OFT_MATMUL_TUNE=0".
# QUICK_FILTER replaces the test filter (default CudaLinear*).
# Usage (on the GPU machine, after scripts/gpu_bundle.sh here): bash scripts/gpu_quick.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
B=$BIN
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
timeout 120 "$B/oft_cuda_tests" --gtest_filter="${QUICK_FILTER:-CudaLinear*}" > "$OUT/linear.log" 2>&1
echo "linear tests exit $?"
grep -E "^\[  FAILED|Failure|Expected|Which is|timing|PASSED" "$OUT/linear.log" | head -60
if [[ -n "${QUICK_ENVS:-}" ]]; then
  IFS=, read -ra envs <<< "$QUICK_ENVS"
else
  envs=()
  for v in ${QUICK_MODES:-0 fwd all}; do envs+=("OFT_GEMM_WGMMA=$v"); done
fi
for i in 1 2; do
  for e in "${envs[@]}"; do
    echo "$e: $(env $e timeout 60 "$B/oft" bench gpt2_124m --steps 10 --no-peak 2>&1 | grep -E "tokens/s|rror")"
  done
done
