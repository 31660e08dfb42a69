#!/usr/bin/env bash
# The main job on the embedded default — the Quantizable Transformers paper in miniature:
# installs dependencies, builds oft, tokenizes Moby-Dick into token shards, trains tiny OPT-style
# models with vanilla softmax, clipped softmax and gated attention on the CPU (about a minute
# each on two cores), then validates each in floating point and simulated W8A8 and prints the
# paper's table (FP ppl | max inf norm | avg kurtosis | W8A8 ppl).
# Extra key=value arguments apply to all three trainings (e.g. train.steps=400).
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
root="runs/paper-$(date +%Y%m%d-%H%M%S)"
for method in vanilla clipped_softmax gated_attention; do
  $OFT train "tiny_opt_125m_$method" --run-dir "$root/$method" "$@"
done
$OFT validate "$root/vanilla" "$root/clipped_softmax" "$root/gated_attention" --quantize
