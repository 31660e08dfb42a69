#!/usr/bin/env bash
# The main job on the embedded default: installs dependencies, builds oft, tokenizes
# Moby-Dick into token shards, trains the `tiny` preset on the CPU (about two minutes on two
# cores) and evaluates it, printing the validation perplexity it reached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
OFT=build/bin/oft
if [ ! -f data/cache/moby_sp2k/train.bin ]; then
  $OFT data prepare data/moby-dick/moby_dick.txt \
    --tokenizer data/tokenizers/moby_sp2k/moby_sp2k.model --out data/cache/moby_sp2k
fi
run="runs/tiny-$(date +%Y%m%d-%H%M%S)"
$OFT train tiny --run-dir "$run" "$@"
$OFT eval "$run"
