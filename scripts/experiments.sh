#!/usr/bin/env bash
# Runs every experiment config with its defaults into runs/<config name>/ (finished runs resume
# instantly), then the paper table. Usage: scripts/experiments.sh [config names...]
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(mnist1d_cnn mnist1d_compress mnist1d_sparsity_sweep mnist1d_bits_sweep mnist1d_sweep
         digits_augment mnist1d_transfer digits_transfer mnist1d_multitask digits_multitask)
fi
for name in "${names[@]}"; do
  if [ -f "configs/$name.py" ]; then
    echo "== $name"
    .venv/bin/jaxopt-ft --config="configs/$name.py" --workdir="runs/$name" --noprogress >/dev/null
  else
    echo "== $name: no config file, skipped"
  fi
done
