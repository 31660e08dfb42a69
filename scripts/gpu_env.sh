# Sourced from the repository root by the GPU-machine scripts (gpu_check.sh, gpu_quick.sh,
# ncu_gemm.sh, ncu_deep.sh): $OUT (default gpu-out) created, OFT_HOME and the library path set,
# gpu-bundle/ unpacked from gpu-bundle.tar.xz (scripts/gpu_bundle.sh) when missing, and BIN its
# binaries.
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OFT_HOME=$PWD
export LD_LIBRARY_PATH=$PWD/gpu-bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
[[ -x gpu-bundle/bin/oft ]] || tar -xJf gpu-bundle.tar.xz
BIN=$PWD/gpu-bundle/bin
