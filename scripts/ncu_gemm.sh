#!/usr/bin/env bash
# Nsight Compute counters of one matrix product of a gpt2_124m training step per configuration, on
# a GPU machine after scripts/gpu_bundle.sh: for each "NAME OFT_GEMM_WGMMA kernel-regex ENV=..."
# entry of NCU_GEMM (comma-separated), launch NCU_SKIP + 1 (default 4) of the kernels the regex
# matches (the log names the kernel and its grid).
# Speed-of-light, memory, warp-state and launch sections; the logs land in $OUT/ncu_NAME.log.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
B=$BIN
IFS=, read -ra cfgs <<< "${NCU_GEMM:-cublas 0 xmma|cutlass}"
for c in "${cfgs[@]}"; do
  set -- $c
  if (($# < 3)); then
    echo "ncu_gemm.sh: NCU_GEMM entry '$c' needs NAME OFT_GEMM_WGMMA kernel-regex [ENV=value ...]" >&2
    exit 2
  fi
  name=$1 mode=$2 re=$3; shift 3
  env "$@" OFT_GEMM_WGMMA=$mode timeout 200 ncu --clock-control none --kernel-name "regex:$re" \
    --launch-skip ${NCU_SKIP:-3} --launch-count 1 --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section LaunchStats --section Occupancy \
    "$B/oft" bench gpt2_124m --steps 1 --warmup 0 --no-peak > "$OUT/ncu_$name.log" 2>&1
  echo "== $name ($*) exit $?"
  grep -vE "^==PROF==|^\s*$|^ *-+ *-+" "$OUT/ncu_$name.log" | grep -E \
    "[a-z_]+.*\(|Duration|Throughput|Pipe|Stall|Warp Cycles|Eligible|Issued Warp|Cluster|Grid Size|Registers|Shared Memory Config|Hit Rate|Busy|Bank" | head -${NCU_LINES:-45}
done
