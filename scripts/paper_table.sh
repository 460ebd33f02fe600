#!/usr/bin/env bash
# The MNIST-1D paper's baseline table over 3 seeds (writes runs/paper/paper_table.{json,md}).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/paper_table.py "$@"
