#!/usr/bin/env bash
# Builds the CUDA-enabled binaries (build-gpu/, sm_90a, static non-CUDA dependencies) and packs
# what a GPU machine needs into gpu-bundle/: stripped `oft` and `oft_cuda_tests`, plus the
# SentencePiece shared libraries (Debian ships no static one), compressed into
# gpu-bundle.tar.xz. scripts/gpu_check.sh unpacks and runs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build-gpu gpu-bundle/bin gpu-bundle/lib
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DOFT_CUDA=ON -DOFT_STATIC_DEPS=ON \
  > build-gpu/configure.log 2>&1 || { cat build-gpu/configure.log; exit 1; }
cmake --build build-gpu --target oft oft_cuda_tests -j"$(nproc)" > build-gpu/build.log 2>&1 \
  || { grep -E -B2 -A12 "error" build-gpu/build.log | head -n 80; exit 1; }
strip -o gpu-bundle/bin/oft build-gpu/bin/oft
strip -o gpu-bundle/bin/oft_cuda_tests build-gpu/oft_cuda_tests
for lib in libsentencepiece.so.0 libsentencepiece_train.so.0; do
  cp -L "/usr/lib/x86_64-linux-gnu/$lib" gpu-bundle/lib/
done
# The binaries hold static OpenBLAS and every kernel's machine code: compressed, they travel in
# a quarter of the space.
tar -cJf gpu-bundle.tar.xz gpu-bundle
du -sh gpu-bundle gpu-bundle.tar.xz
