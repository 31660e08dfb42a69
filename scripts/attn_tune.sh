#!/usr/bin/env bash
# Runs on a GPU machine (after scripts/gpu_bundle.sh here): checks the D = 64 attention kernel
# variants selected by OFT_ATTN_TUNE ("rb,fwd_minb,bwd_minb", see attention_mma.cu) against the
# CPU backend, then times each at the GPT-2 shape and in a whole `oft bench gpt2_124m` step.
# Usage: bash scripts/attn_tune.sh [variant...]   (default: the defaults plus a few others)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OFT_HOME=$PWD
export LD_LIBRARY_PATH=$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[[ -x gpu-bundle/bin/oft ]] || tar -xJf gpu-bundle.tar.xz
BIN=$PWD/gpu-bundle/bin
variants=${*:-"0,1,1 1,1,1 1,1,3 2,1,3 2,2,3"}
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
for v in $variants; do
  echo "== OFT_ATTN_TUNE=$v"
  OFT_ATTN_TUNE=$v "$BIN/oft_cuda_tests" --gtest_filter='CudaAttention*' > "$OUT/attn_$v.log" 2>&1
  echo "tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/attn_$v.log" | tr '\n' ' ')"
  grep -E "attention bench" "$OUT/attn_$v.log"
  OFT_ATTN_TUNE=$v "$BIN/oft" bench gpt2_124m --steps 10 --no-peak > "$OUT/bench_$v.log" 2>&1
  grep -E "tokens/s" "$OUT/bench_$v.log"
done
