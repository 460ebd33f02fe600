#!/usr/bin/env bash
# Seeds 1 and 2 of the configs whose README tables average seeds 0-2 (seed 0 is the default run
# in runs/<config>/, written by scripts/experiments.sh); runs/<config>_seed<N>/ each.
# Usage: scripts/more_seeds.sh [config names...]
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(mnist1d_compress mnist1d_multitask)
fi
for name in "${names[@]}"; do
  for seed in 1 2; do
    if [ -f "runs/${name}_seed$seed/report.json" ]; then
      continue  # finished earlier; delete the folder to run it again
    fi
    .venv/bin/jaxopt-ft --config="configs/$name.py" --workdir="runs/${name}_seed$seed" \
      --config.seed=$seed --noprogress >/dev/null
  done
done
