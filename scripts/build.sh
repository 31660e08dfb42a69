#!/usr/bin/env bash
# Configures and builds oft into build/ (Release). Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" > build/configure.log 2>&1 \
  || { cat build/configure.log; exit 1; }
if ! cmake --build build -j"$(nproc)" > build/build.log 2>&1; then
  grep -E -B2 -A12 "error|Error" build/build.log | head -n 80
  echo "build failed: full log in build/build.log"
  exit 1
fi
tail -n 1 build/build.log
