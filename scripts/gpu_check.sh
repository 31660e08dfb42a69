#!/usr/bin/env bash
# Runs on a GPU machine over a copy of the repository with gpu-bundle/ (scripts/gpu_bundle.sh):
#   1. every CUDA op against the CPU backend on fresh random inputs (oft_cuda_tests), whole
#      tiny models of every family GPU-vs-CPU, and the kernels' timing prints;
#   2. a real training run of the `tiny` preset on the GPU (compare its perplexity with the
#      CPU figure in docs/performance.md);
#   3. `oft bench` of the performance presets.
#   4. (torch) the whole-model loss and gradients against an independent PyTorch model;
#   5. (peers) the PyTorch peer throughputs of REFERENCE.md §8 on the same GPU.
# Results land in $OUT (or ./gpu-out).
# Usage: bash scripts/gpu_check.sh [tests] [train] [bench] [torch] [peers] [sanitize]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OFT_HOME=$PWD
export LD_LIBRARY_PATH=$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[[ -x gpu-bundle/bin/oft ]] || tar -xJf gpu-bundle.tar.xz
BIN=$PWD/gpu-bundle/bin
what=${*:-tests train bench}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader

if [[ " $what " == *" tests "* ]]; then
  echo "== GPU-vs-CPU op and model checks"
  "$BIN/oft_cuda_tests" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} > "$OUT/cuda_tests.log" 2>&1
  echo "oft_cuda_tests exit $?"
  grep -E "^\[  FAILED|Failure|error|rel|Expected|Which is|\[model|TFLOP|GB/s| ms" "$OUT/cuda_tests.log" | head -150
  grep -E "^\[  PASSED|tests ran" "$OUT/cuda_tests.log"
fi

if [[ " $what " == *" train "* ]]; then
  echo "== tiny preset trained on the GPU"
  "$BIN/oft" data prepare data/moby-dick/moby_dick.txt -t data/tokenizers/moby_sp2k/moby_sp2k.model \
    -o data/cache/moby_sp2k > "$OUT/prepare.log" 2>&1 || tail -5 "$OUT/prepare.log"
  for prec in bf16 f32; do
    echo "-- train.precision=$prec"
    "$BIN/oft" train tiny train.device=cuda train.precision=$prec --run-dir /tmp/tiny_gpu_$prec -q 2>&1 | tail -3
  done
fi

if [[ " $what " == *" bench "* ]]; then
  echo "== oft bench"
  b() {  # name, preset, overrides...
    local name=$1; shift
    "$BIN/oft" bench "$@" --steps ${BENCH_STEPS:-10} --json "$OUT/bench_$name.json" > "$OUT/bench_$name.log" 2>&1
    echo "-- $name (exit $?)"; grep -E "tokens/s|MFU|memory|loss|error|Error" "$OUT/bench_$name.log"
  }
  b gpt2_124m_vanilla gpt2_124m --profile
  b gpt2_124m_clipped gpt2_124m "model.attn_softmax=clipped(-0.025:1)"
  b gpt2_124m_gated gpt2_124m model.attn_gate_type=conditional_per_token
  b opt_125m_vanilla opt_125m_vanilla train.grad_accum=1
  b opt_125m_clipped opt_125m_clipped_softmax train.grad_accum=1
  b opt_125m_gated opt_125m_gated_attention train.grad_accum=1
  b bert_base bert_base_vanilla train.grad_accum=1
  b opt_1.3b_b16 opt_1.3b_vanilla train.grad_accum=1 train.batch_size=16 --no-peak
  grep -A40 "per-op" "$OUT/bench_gpt2_124m_vanilla.log"
fi

if [[ " $what " == *" torch "* ]]; then
  echo "== independent PyTorch reference: loss and gradients of oft's CPU and GPU backends"
  rm -rf /tmp/oft_dump
  OFT_DUMP_DIR=/tmp/oft_dump "$BIN/oft_cuda_tests" --gtest_filter='TorchDump.*' > "$OUT/dump.log" 2>&1 \
    || tail -5 "$OUT/dump.log"
  python3 scripts/torch/reference.py /tmp/oft_dump 2>&1 | tee "$OUT/reference.log"
fi

if [[ " $what " == *" peers "* ]]; then
  echo "== PyTorch peers on this GPU"
  PYTHONUNBUFFERED=1 python3 scripts/torch/peers.py ${PEERS_ARGS:-} 2>&1 | tee "$OUT/peers.log" | grep -E "^peer|rror"
fi

if [[ " $what " == *" sanitize "* ]]; then
  echo "== compute-sanitizer memcheck on the whole-model tests"
  compute-sanitizer --tool memcheck --print-limit 20 "$BIN/oft_cuda_tests" \
    --gtest_filter="${SANITIZE_FILTER:-Presets/CudaModel.*}" > "$OUT/sanitize.log" 2>&1
  echo "exit $?"; grep -E "Invalid|ERROR SUMMARY|at 0x|by thread|FAILED" "$OUT/sanitize.log" | head -40
fi

# At most a few files come back from a GPU machine: pack the logs into one archive.
tar -czf /tmp/oft_logs.tar.gz -C "$OUT" . && find "$OUT" -type f -delete && mv /tmp/oft_logs.tar.gz "$OUT/logs.tar.gz"
