#!/usr/bin/env bash
# Installs oft's build dependencies from Debian's packages (idempotent: skips what is present).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libcli11-dev nlohmann-json3-dev libyaml-cpp-dev zlib1g-dev
      libopenblas-openmp-dev libsentencepiece-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
