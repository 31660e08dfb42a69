# Sourced from the repository root by the GPU-machine scripts (gpu_check.sh, gpu_ab.sh,
# gpu_quick.sh, ncu_gemm.sh, ncu_deep.sh): $OUT (default gpu-out) created, OFT_HOME and the
# library path set, gpu-bundle/ unpacked from gpu-bundle.tar.xz (scripts/gpu_bundle.sh) when
# missing, and BIN its binaries; pack_logs for the end of a script.
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OFT_HOME=$PWD
export LD_LIBRARY_PATH=$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[[ -x gpu-bundle/bin/oft ]] || tar -xJf gpu-bundle.tar.xz
BIN=$PWD/gpu-bundle/bin
# At most a few files come back from a GPU machine: pack_logs moves every file under $OUT but
# summary.txt into one archive, $OUT/logs.tar.gz (the scripts call it last).
pack_logs() {
  tar -czf /tmp/oft_logs.tar.gz -C "$OUT" --exclude=./summary.txt . \
    && find "$OUT" -type f ! -path "$OUT/summary.txt" -delete \
    && mv /tmp/oft_logs.tar.gz "$OUT/logs.tar.gz"
}
