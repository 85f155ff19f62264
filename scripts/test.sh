#!/usr/bin/env bash
# Set up, then run the whole test suite (tiny random models for breadth, SmolLM2 for one end-to-end run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check nashflow tests workflow benchmarks
exec .venv/bin/python -m pytest "$@"
