#!/usr/bin/env bash
# Nsight Compute deep dive of the attention backward kernels on a GPU machine (after
# scripts/gpu_bundle.sh): full-set reports, stall reasons and per-SASS stall samples, packed
# into $OUT/ncu_deep.tar.gz.
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
IFS=, read -ra kernels <<< "${NCU_DEEP:-0 bwd_mma_kernel,all bwd_tma_kernel}"  # "OFT_ATTN_WGMMA kernel-regex",...
for k in "${kernels[@]}"; do
  set -- $k
  OFT_ATTN_WGMMA=$1 timeout 200 ncu --clock-control none --kernel-name regex:$2 --launch-skip 1 --launch-count 1 \
    --set full --import-source yes -o $OUT/rep_$2 -f "$BIN/oft_cuda_tests" --gtest_filter='CudaAttentionBench.*' > $OUT/ncu_run_$2.log 2>&1
  echo "ncu $2 exit $?"
  ncu --import $OUT/rep_$2.ncu-rep --page details --print-details all > $OUT/details_$2.txt 2>&1
  ncu --import $OUT/rep_$2.ncu-rep --page raw --csv > $OUT/raw_$2.csv 2>&1
  ncu --import $OUT/rep_$2.ncu-rep --page source --print-source sass --csv > $OUT/sass_$2.csv 2>&1
  echo "exports: $(wc -c $OUT/details_$2.txt $OUT/raw_$2.csv $OUT/sass_$2.csv | tr '\n' ' ')"
  grep -iE "stall|Warp Cycles|Duration|Occupancy|Registers" $OUT/details_$2.txt | head -60
done
mkdir -p /tmp/ncu_deep && mv $OUT/rep_* $OUT/details_* $OUT/raw_* $OUT/sass_* $OUT/ncu_run_* /tmp/ncu_deep/ 2>/dev/null
tar -czf $OUT/ncu_deep.tar.gz -C /tmp/ncu_deep .
