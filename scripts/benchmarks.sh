#!/usr/bin/env bash
# Every benchmark side by side; writes benchmarks/results.json and benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/run_benchmarks.py "$@"
