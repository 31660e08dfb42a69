#!/usr/bin/env bash
# Builds the CUDA-enabled binaries (build-gpu/, sm_90a, static non-CUDA dependencies) and packs
# what a GPU machine needs into gpu-bundle/: stripped `oft` and `oft_cuda_tests`, plus the
# SentencePiece shared libraries (Debian ships no static one), compressed into
# gpu-bundle.tar.xz. scripts/gpu_check.sh unpacks and runs it there.
#
# With PATCH=file (a `git apply` patch, e.g. one of docs/performance/patches/): the tree as it is
# is built first and packed as oft_base / oft_cuda_tests_base, then the patch is applied, the
# patched tree built and packed as oft / oft_cuda_tests, and the patch reverted, so that one GPU
# call can compare the two (scripts/gpu_ab.sh):
#   PATCH=docs/performance/patches/attn-bwd-cta-pairs.patch bash scripts/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-gpu gpu-bundle/bin gpu-bundle/lib
rm -f gpu-bundle/bin/oft_base gpu-bundle/bin/oft_cuda_tests_base

build() {  # build-gpu's oft and oft_cuda_tests, stripped into gpu-bundle/bin with suffix $1
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DOFT_CUDA=ON -DOFT_STATIC_DEPS=ON \
    > build-gpu/configure.log 2>&1 || { cat build-gpu/configure.log; exit 1; }
  cmake --build build-gpu --target oft oft_cuda_tests -j"$(nproc)" > build-gpu/build.log 2>&1 \
    || { grep -E -B2 -A12 "error" build-gpu/build.log | head -n 80; exit 1; }
  strip -o "gpu-bundle/bin/oft$1" build-gpu/bin/oft
  strip -o "gpu-bundle/bin/oft_cuda_tests$1" build-gpu/oft_cuda_tests
}

if [[ -n "${PATCH:-}" ]]; then
  git apply --check "$PATCH" || { echo "gpu_bundle.sh: $PATCH does not apply to this tree" >&2; exit 1; }
  build _base
  git apply "$PATCH"
  trap 'git apply -R "$PATCH" && echo "gpu_bundle.sh: $PATCH reverted"' EXIT
fi
build ""
for lib in libsentencepiece.so.0 libsentencepiece_train.so.0; do
  cp -L "/usr/lib/x86_64-linux-gnu/$lib" gpu-bundle/lib/
done
# The binaries hold static OpenBLAS and every kernel's machine code: compressed, they travel in
# a quarter of the space (a PATCH bundle, with both builds, in about 32 MB).
tar -cJf gpu-bundle.tar.xz gpu-bundle
du -sh gpu-bundle gpu-bundle.tar.xz
