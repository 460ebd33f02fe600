#!/usr/bin/env bash
# Runs every experiment config with its defaults into runs/<config name>/ (a run with a report
# is kept as it is; an unfinished one resumes), the MNIST-1D paper table
# (scripts/paper_table.sh, name "paper") and seeds 1-2 of the multi-seed tables
# (scripts/more_seeds.sh, name "seeds"), $JOBS at a time (default 2: the small models here use
# about one core each).
# Usage: scripts/experiments.sh [names...]   e.g. scripts/experiments.sh mnist1d_sweep paper
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  # Longest first, so the two lanes finish together.
  names=(seeds digits_augment paper mnist1d_sparsity_sweep mnist1d_sweep digits_multitask
         mnist1d_multitask mnist1d_bits_sweep mnist1d_compress digits_transfer mnist1d_transfer
         mnist1d_cnn)
fi
for name in "${names[@]}"; do
  if [ "$name" != paper ] && [ "$name" != seeds ] && [ ! -f "configs/$name.py" ]; then
    echo "experiments.sh: no config file configs/$name.py" >&2
    exit 2
  fi
done
run_one() {
  local name=$1 start=$SECONDS log="runs/$1.log"
  mkdir -p runs
  if [ "$name" != paper ] && [ "$name" != seeds ] && [ -f "runs/$name/report.json" ]; then
    echo "== $name: finished earlier, report kept (delete runs/$name to run it again)"
    return 0
  fi
  if [ "$name" = paper ]; then
    scripts/paper_table.sh >"$log" 2>&1
  elif [ "$name" = seeds ]; then
    scripts/more_seeds.sh >"$log" 2>&1
  else
    .venv/bin/jaxopt-ft --config="configs/$name.py" --workdir="runs/$name" --noprogress \
      >"$log" 2>&1
  fi || { echo "== $name FAILED after $((SECONDS - start)) s (see $log)"; return 1; }
  echo "== $name done in $((SECONDS - start)) s"
}
export -f run_one
printf '%s\n' "${names[@]}" | xargs -P "${JOBS:-2}" -I{} bash -c 'run_one "$@"' _ {}
