#!/usr/bin/env bash
# On a GPU machine, with a bundle built by `PATCH=file bash scripts/gpu_bundle.sh`: the patched
# build (oft, oft_cuda_tests) against the tree it was applied to (oft_base,
# oft_cuda_tests_base), in one call, alternating so that both see the same machine:
#   1. the GPU tests of the patched build (gtest filter AB_TESTS, default all of them), and with
#      AB_ENV_TESTS (a gtest filter) those tests once per AB_ENVS setting;
#   2. the timing tests (AB_BENCH, default the norm, attention and linear ones) of each build,
#      AB_ROUNDS times (default 2), the patched build once per AB_ENVS setting;
#   3. `oft bench PRESET --steps 10 --no-peak` of each preset in AB_PRESETS (default
#      gpt2_124m), base then patched, AB_ROUNDS times; with AB_ENVS (space-separated VAR=value
#      settings), the patched build once per setting, for patches that carry a switch.
# Results land in $OUT (or ./gpu-out): summary.txt and the logs, packed into logs.tar.gz.
#   AB_PRESETS="gpt2_124m opt_125m_vanilla" bash scripts/gpu_ab.sh
#   AB_ENVS="OFT_ATTN_FWD_PIPE=64 OFT_ATTN_FWD_PIPE=128" AB_ENV_TESTS='CudaAttention.*' \
#     bash scripts/gpu_ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
if [[ ! -x "$BIN/oft_base" || ! -x "$BIN/oft_cuda_tests_base" ]]; then
  echo "gpu_ab.sh: the bundle has no base build; make it with PATCH=file bash scripts/gpu_bundle.sh" >&2
  exit 2
fi
rounds=${AB_ROUNDS:-2}
# The patched build's GPU tests: label, log file, gtest filter (empty: all), then an optional
# VAR=value setting; prints the exit status, the summary and the first failures.
run_tests() {
  local label=$1 log=$2 filter=$3 setting=${4:-}
  env ${setting:+"$setting"} timeout 400 "$BIN/oft_cuda_tests" ${filter:+--gtest_filter=$filter} \
    > "$log" 2>&1
  echo "$label: exit $? $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' "$log" | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure" "$log" | head -40
}
{
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
  echo "== tests of the patched build (${AB_TESTS:-all})"
  run_tests "oft_cuda_tests" "$OUT/ab_tests.log" "${AB_TESTS:-}"
  read -r -a envs <<< "${AB_ENVS:-}"
  [[ ${#envs[@]} -gt 0 ]] || envs=("")  # the patched build once, as it is
  if [[ -n "${AB_ENV_TESTS:-}" && -n "${AB_ENVS:-}" ]]; then
    for e in "${envs[@]}"; do
      run_tests "tests with $e" "$OUT/ab_tests_${e//[^A-Za-z0-9]/_}.log" "$AB_ENV_TESTS" "$e"
    done
  fi
  echo "== timing tests (${AB_BENCH:=CudaNnBench.*:CudaAttentionBench.*:CudaLinearBench.*})"
  for ((r = 1; r <= rounds; ++r)); do
    timeout 120 "$BIN/oft_cuda_tests_base" --gtest_filter="$AB_BENCH" > "$OUT/ab_bench_base.$r.log" 2>&1
    grep -E "timing|bench\]" "$OUT/ab_bench_base.$r.log" | sed "s/^/_base $r: /"
    for e in "${envs[@]}"; do
      log="$OUT/ab_bench${e:+_${e//[^A-Za-z0-9]/_}}.$r.log"
      env ${e:+"$e"} timeout 120 "$BIN/oft_cuda_tests" --gtest_filter="$AB_BENCH" > "$log" 2>&1
      grep -E "timing|bench\]" "$log" | sed "s/^/_patched${e:+ $e} $r: /"
    done
  done
  echo "== oft bench (${AB_PRESETS:=gpt2_124m})"
  for p in $AB_PRESETS; do
    for ((r = 1; r <= rounds; ++r)); do
      timeout 200 "$BIN/oft_base" bench "$p" --steps 10 --no-peak > "$OUT/ab_${p}_base.$r.log" 2>&1
      echo "$p _base $r: $(grep -E 'tokens/s|rror' "$OUT/ab_${p}_base.$r.log" | tr '\n' ' ')"
      for e in "${envs[@]}"; do
        log="$OUT/ab_${p}${e:+_${e//[^A-Za-z0-9]/_}}.$r.log"
        env ${e:+"$e"} timeout 200 "$BIN/oft" bench "$p" --steps 10 --no-peak > "$log" 2>&1
        echo "$p _patched${e:+ $e} $r: $(grep -E 'tokens/s|rror' "$log" | tr '\n' ' ')"
      done
    done
  done
} 2>&1 | tee "$OUT/summary.txt"
pack_logs  # summary.txt stays beside the archive (gpu_env.sh)
