#!/usr/bin/env bash
# Runs on a GPU machine over a copy of the repository with gpu-bundle/ (scripts/gpu_bundle.sh):
#   1. every CUDA op against the CPU backend on fresh random inputs (oft_cuda_tests), whole
#      tiny models of every family GPU-vs-CPU, and the kernels' timing prints;
#   2. a real training run of the `tiny` preset on the GPU (compare its perplexity with the
#      CPU figure in docs/performance.md);
#   3. `oft bench` of the performance presets.
#   4. (torch) the whole-model loss and gradients against an independent PyTorch model;
#   5. (peers) the PyTorch peer throughputs of REFERENCE.md §8 on the same GPU.
#   6. (hf) Hugging Face interop against transformers: random GPT-2 / OPT / BERT models
#      imported, their logits and tokenizations compared, exports loaded back.
#   7. (dist) data-parallel training through NCCL: one-rank NCCL runs (DDP, ZeRO-1) against the
#      plain run, then with 2+ GPUs the same runs on every GPU, resuming a run on another GPU
#      count, and `oft bench --gpus N` scaling of OPT-125m / OPT-350m.
#   8. (ncu) Nsight Compute counters of the attention kernels (NCU_KERNELS, NCU_FILTER).
#   9. (tune) the D = 64 attention launch variants (OFT_ATTN_TUNE, TUNE_VARIANTS): each checked
#      against the CPU backend, then timed alone and in a gpt2_124m training step.
#  10. (wgmma) the mma.sync attention kernels in place of the Hopper ones (OFT_ATTN_WGMMA=0): the
#      attention tests against the CPU backend, and with OFT_ATTN_WGMMA=all (the Hopper
#      backward too); the attention timing and training steps of gpt2_124m / opt_125m for each
#      of WGMMA_MODES (default "0 all"); the Hopper kernels' ncu counters.
#  11. (eval) `oft validate --quantize` of an OPT-125m-sized model (12 x 768, vocabulary 2048,
#      the Moby-Dick shard) trained a few steps on the GPU, timed with this build and, when the
#      bundle has one, a previous build (gpu-bundle/bin/oft_base) for comparison
#      (EVAL_BATCHES, METRIC_BATCHES: default 40 and 10).
# Results land in $OUT (or ./gpu-out).
# Usage: bash scripts/gpu_check.sh [tests] [train] [bench] [torch] [peers] [sanitize] [hf] [dist] [ncu] [tune] [wgmma] [eval]
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
what=${*:-tests train bench}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader

if [[ " $what " == *" tests "* ]]; then
  echo "== GPU-vs-CPU op and model checks"
  timeout 400 "$BIN/oft_cuda_tests" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} > "$OUT/cuda_tests.log" 2>&1
  echo "oft_cuda_tests exit $?"
  grep -E "^\[  FAILED|Failure|error|rel|Expected|Which is|\[model|TFLOP|GB/s| ms" "$OUT/cuda_tests.log" | head -150
  grep -E "^\[  PASSED|tests ran" "$OUT/cuda_tests.log"
  # The small test shapes run the mma.sync attention under the default size rules: the Hopper
  # kernels on every shape they apply to, with the opt-in fused dQ store.
  OFT_ATTN_DQ_STORE=fused OFT_ATTN_WGMMA=all timeout 300 "$BIN/oft_cuda_tests" --gtest_filter='CudaAttention*:Presets/CudaModel.*' > "$OUT/cuda_tests_wgmma.log" 2>&1
  echo "OFT_ATTN_WGMMA=all attention and model tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda_tests_wgmma.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" "$OUT/cuda_tests_wgmma.log" | head -20
  # The whole models with the Hopper GELU products (opt-in) in place of cuBLASLt's epilogues.
  OFT_GEMM_WGMMA=all timeout 300 "$BIN/oft_cuda_tests" --gtest_filter='Presets/CudaModel.*' > "$OUT/cuda_tests_gemm.log" 2>&1
  echo "OFT_GEMM_WGMMA=all model tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda_tests_gemm.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" "$OUT/cuda_tests_gemm.log" | head -20
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
  b gpt2_124m_overlap gpt2_124m train.overlap_update=true  # A/B with the line above
  b gpt2_124m_clipped gpt2_124m "model.attn_softmax=clipped(-0.025:1)" --profile
  b gpt2_124m_gated gpt2_124m model.attn_gate_type=conditional_per_token --profile
  b opt_125m_vanilla opt_125m_vanilla train.grad_accum=1
  b opt_125m_clipped opt_125m_clipped_softmax train.grad_accum=1
  b opt_125m_gated opt_125m_gated_attention train.grad_accum=1
  b opt_125m_gated_overlap opt_125m_gated_attention train.grad_accum=1 train.overlap_update=true
  b bert_base bert_base_vanilla train.grad_accum=1
  b opt_1.3b_b16 opt_1.3b_vanilla train.grad_accum=1 train.batch_size=16 --no-peak
  grep -A40 "per-op" "$OUT/bench_gpt2_124m_vanilla.log"
  for v in clipped gated; do echo "-- $v"; grep -A20 "per-op" "$OUT/bench_gpt2_124m_$v.log"; done
fi

if [[ " $what " == *" eval "* ]]; then
  echo "== oft validate on the GPU: outlier metrics and simulated W8A8"
  "$BIN/oft" data prepare data/moby-dick/moby_dick.txt -t data/tokenizers/moby_sp2k/moby_sp2k.model \
    -o data/cache/moby_sp2k > "$OUT/prepare.log" 2>&1 || tail -5 "$OUT/prepare.log"
  shard=data/cache/moby_sp2k/train.bin  # (the validation shard holds under 3 batches of 16 x 512)
  "$BIN/oft" train opt_125m_vanilla model.vocab_size=2048 data.train=$shard data.val=$shard \
    data.tokenizer=data/tokenizers/moby_sp2k/moby_sp2k.model train.grad_accum=1 train.steps=20 \
    train.eval_every=0 train.device=cuda --run-dir /tmp/eval_opt125 -q 2>&1 | tail -2
  # This build first: a previous one without the device-side metrics can take minutes.
  for x in oft oft_base; do
    [[ -x "$BIN/$x" ]] || continue
    /usr/bin/time -f "-- $x validate --quantize: %e s" "$BIN/$x" validate /tmp/eval_opt125 --quantize \
      train.eval_batches=${EVAL_BATCHES:-40} metrics.batches=${METRIC_BATCHES:-10} > "$OUT/eval_$x.log" 2>&1
    grep -E "perplexity|validate --quantize|rror" "$OUT/eval_$x.log"
    cp /tmp/eval_opt125/validation.json "$OUT/eval_$x.json" 2>/dev/null
    # The phase times (builds since validation.json has "seconds").
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])).get("seconds"); s and print("   seconds:", ", ".join(f"{k} {v:.2f}" for k, v in s.items()))' \
      "$OUT/eval_$x.json" 2>/dev/null
  done
fi

if [[ " $what " == *" torch "* ]]; then
  echo "== independent PyTorch reference: loss and gradients of oft's CPU and GPU backends"
  for mode in auto all; do  # all: the Hopper attention kernels on these small models too
    rm -rf /tmp/oft_dump
    OFT_ATTN_WGMMA=$mode OFT_DUMP_DIR=/tmp/oft_dump "$BIN/oft_cuda_tests" --gtest_filter='TorchDump.*' > "$OUT/dump_$mode.log" 2>&1 \
      || tail -5 "$OUT/dump_$mode.log"
    echo "-- OFT_ATTN_WGMMA=$mode"
    python3 scripts/torch/reference.py /tmp/oft_dump 2>&1 | tee "$OUT/reference_$mode.log"
  done
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

if [[ " $what " == *" hf "* ]]; then
  echo "== Hugging Face import / export against transformers"
  python3 scripts/torch/hf_check.py --oft "$BIN/oft" 2>&1 | tee "$OUT/hf_check.log" | tail -50
fi

if [[ " $what " == *" dist "* ]]; then
  echo "== data-parallel training through NCCL"
  if [[ -z "${OFT_NCCL_LIBRARY:-}" ]]; then
    # The NCCL that ships with PyTorch, else any on the machine.
    OFT_NCCL_LIBRARY=$(python3 -c 'import nvidia.nccl as n, glob, os; print((glob.glob(os.path.join(list(n.__path__)[0], "lib", "libnccl.so*")) + [""])[0])' 2>/dev/null)
    [[ -n "$OFT_NCCL_LIBRARY" ]] || OFT_NCCL_LIBRARY=$(find / -name 'libnccl.so.2' -not -path '/proc/*' 2>/dev/null | head -1)
    export OFT_NCCL_LIBRARY
  fi
  echo "NCCL library: ${OFT_NCCL_LIBRARY:-none found}"
  ngpu=$(nvidia-smi -L | wc -l)
  echo "GPUs: $ngpu"
  "$BIN/oft" data prepare data/moby-dick/moby_dick.txt -t data/tokenizers/moby_sp2k/moby_sp2k.model \
    -o data/cache/moby_sp2k > "$OUT/prepare.log" 2>&1 || tail -5 "$OUT/prepare.log"
  dp_common="tiny train.device=cuda train.steps=${DIST_STEPS:-80} train.eval_every=40 train.log_every=10 -q"
  run() {  # name, extra args...
    local name=$1; shift
    rm -rf "/tmp/dp_$name"
    "$@" > "$OUT/dist_$name.log" 2>&1
    echo "-- $name (exit $?)"; grep -E "error|rror:" "$OUT/dist_$name.log" | head -5
    cp "/tmp/dp_$name/metrics.jsonl" "$OUT/metrics_$name.jsonl" 2>/dev/null
  }
  run plain "$BIN/oft" train $dp_common --run-dir /tmp/dp_plain
  run nccl1 env OFT_WORLD_SIZE=1 OFT_RANK=0 "$BIN/oft" train $dp_common --run-dir /tmp/dp_nccl1
  run nccl1_zero1 env OFT_WORLD_SIZE=1 OFT_RANK=0 "$BIN/oft" train $dp_common train.zero_stage=1 --run-dir /tmp/dp_nccl1_zero1
  if (( ngpu >= 2 )); then
    run gpus2 "$BIN/oft" train $dp_common --gpus 2 --run-dir /tmp/dp_gpus2
    run gpus2_zero1 "$BIN/oft" train $dp_common --gpus 2 train.zero_stage=1 --run-dir /tmp/dp_gpus2_zero1
    # A run split across GPU counts: 2 GPUs (ZeRO-1) to step 40, then 1 GPU; and 1 -> 2.
    run split21 "$BIN/oft" train $dp_common --gpus 2 train.zero_stage=1 train.stop_at=40 --run-dir /tmp/dp_split21
    "$BIN/oft" train $dp_common train.resume=true --run-dir /tmp/dp_split21 > "$OUT/dist_split21b.log" 2>&1
    echo "-- split21 resumed on 1 GPU (exit $?)"; cp /tmp/dp_split21/metrics.jsonl "$OUT/metrics_split21.jsonl"
    run split12 "$BIN/oft" train $dp_common train.stop_at=40 --run-dir /tmp/dp_split12
    "$BIN/oft" train $dp_common --gpus 2 train.zero_stage=1 train.resume=true --run-dir /tmp/dp_split12 > "$OUT/dist_split12b.log" 2>&1
    echo "-- split12 resumed on 2 GPUs (exit $?)"; cp /tmp/dp_split12/metrics.jsonl "$OUT/metrics_split12.jsonl"
    # A failing rank stops the others: a bad override on rank 1 only is not possible from the
    # command line, so kill one rank and check the launcher returns.
  fi
  python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(os.path.join(out, "metrics_*.jsonl"))):
    name = os.path.basename(f)[8:-6]
    loss, val = {}, {}
    for line in open(f):
        r = json.loads(line)
        if "loss" in r: loss[r["step"]] = r["loss"]
        if "val_loss" in r: val[r["step"]] = r["val_loss"]
    runs[name] = (loss, val)
base = runs.get("plain")
print("%-14s %10s %10s %12s %12s" % ("run", "loss@end", "val@end", "max|dloss|", "vs plain"))
for name, (loss, val) in runs.items():
    if not loss: continue
    last = max(loss); lv = max(val) if val else None
    d = max(abs(loss[s] - base[0][s]) for s in loss if s in base[0]) if base else 0
    print("%-14s %10.4f %10s %12.2e %12s" % (name, loss[last], "%.4f" % val[lv] if lv else "-", d,
          "%+.3f%%" % (100 * (val[lv] - base[1][max(base[1])]) / base[1][max(base[1])]) if lv and base and base[1] else "-"))
PY
  echo "-- scaling (oft bench --gpus N, per-GPU batch of the preset)"
  for preset in opt_125m_vanilla opt_350m_vanilla; do
    n=1
    while (( n <= ngpu )); do
      for z in 0 1; do
        (( n == 1 && z == 1 )) && continue
        "$BIN/oft" bench $preset train.grad_accum=1 train.zero_stage=$z --gpus $n --steps ${BENCH_STEPS:-10} --no-peak \
          --json "$OUT/scale_${preset}_g${n}_z$z.json" > "$OUT/scale_${preset}_g${n}_z$z.log" 2>&1
        echo "$preset gpus=$n zero=$z (exit $?): $(grep -E "tokens/s|memory|rror" "$OUT/scale_${preset}_g${n}_z$z.log" | tr '\n' ' ')"
      done
      n=$((n * 2))
    done
  done
fi

if [[ " $what " == *" tune "* ]]; then
  echo "== attention launch variants (OFT_ATTN_TUNE=rb,fwd_minb,bwd_minb[,bwd_warps], attention_mma.cu)"
  for v in ${TUNE_VARIANTS:-0,1,1 1,1,1 0,1,3 0,1,1,8 1,1,1,8}; do
    OFT_ATTN_TUNE=$v "$BIN/oft_cuda_tests" --gtest_filter='CudaAttention*' > "$OUT/attn_$v.log" 2>&1
    echo "-- $v: tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/attn_$v.log" | tr '\n' ' ')"
    grep -E "attention bench" "$OUT/attn_$v.log"
    OFT_ATTN_TUNE=$v "$BIN/oft" bench gpt2_124m --steps 10 --no-peak > "$OUT/tune_bench_$v.log" 2>&1
    grep -E "tokens/s" "$OUT/tune_bench_$v.log"
  done
fi

if [[ " $what " == *" wgmma "* ]]; then
  echo "== attention kernel choices (OFT_ATTN_WGMMA=0: mma.sync only; all: Hopper forward and backward)"
  OFT_ATTN_WGMMA=0 timeout 300 "$BIN/oft_cuda_tests" --gtest_filter='CudaAttention*:Presets/CudaModel.*' > "$OUT/wgmma_tests.log" 2>&1
  echo "tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/wgmma_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure|attention bench" "$OUT/wgmma_tests.log" | head -40
  OFT_ATTN_WGMMA=all timeout 300 "$BIN/oft_cuda_tests" --gtest_filter='CudaAttention*:Presets/CudaModel.*' > "$OUT/wgmma_all_tests.log" 2>&1
  echo "OFT_ATTN_WGMMA=all tests exit $?: $(grep -E '^\[  (PASSED|FAILED)' "$OUT/wgmma_all_tests.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" "$OUT/wgmma_all_tests.log" | head -20
  for mode in ${WGMMA_MODES:-0 all}; do
    OFT_ATTN_WGMMA=$mode timeout 100 "$BIN/oft_cuda_tests" --gtest_filter='CudaAttentionBench.*' 2>&1 | grep -E "attention bench" | sed "s/^/$mode: /"
    for p in gpt2_124m opt_125m_vanilla opt_125m_clipped_softmax; do
      OFT_ATTN_WGMMA=$mode timeout 120 "$BIN/oft" bench $p train.grad_accum=1 --steps ${BENCH_STEPS:-10} --no-peak > "$OUT/wgmma_bench_${mode}_$p.log" 2>&1
      echo "-- OFT_ATTN_WGMMA=$mode $p: $(grep -E "tokens/s|rror" "$OUT/wgmma_bench_${mode}_$p.log" | tr '\n' ' ')"
    done
  done
  OFT_ATTN_WGMMA=all timeout 180 ncu --clock-control none --kernel-name "regex:wgmma_kernel|tma_kernel" --launch-skip 2 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    "$BIN/oft_cuda_tests" --gtest_filter='CudaAttentionBench.*' > "$OUT/wgmma_ncu.log" 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Warp Cycles Per Issued|Stall" "$OUT/wgmma_ncu.log" | head -30
fi

if [[ " $what " == *" ncu "* ]]; then
  echo "== Nsight Compute: the attention kernels at the GPT-2 shape (B 16, T 1024, H 12, D 64)"
  ncu --clock-control none --kernel-name "${NCU_KERNELS:-regex:mma_kernel|row_term|dq_store}" \
    --launch-skip ${NCU_SKIP:-3} --launch-count ${NCU_COUNT:-6} \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    "$BIN/oft_cuda_tests" --gtest_filter="${NCU_FILTER:-CudaAttentionBench.*}" > "$OUT/ncu.log" 2>&1
  echo "ncu exit $?"
  grep -E "^  [a-z_].*\(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Shared Memory Configuration Size|Dynamic Shared|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|L1/TEX Hit|L2 Hit|DRAM Throughput|Executed Ipc A" "$OUT/ncu.log" | head -150
fi

pack_logs  # the logs into one archive (gpu_env.sh)
