#!/usr/bin/env bash
# Set up, then run the embedded default (2 iterations of iterative DPO on SmolLM2-135M-Instruct,
# offline, CPU) and write the report to results/default/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# Resuming after a crash: a killed Snakemake leaves its lock behind. Remove it only when no other
# Snakemake process is running in this directory.
if [ -n "$(ls -A .snakemake/locks 2>/dev/null)" ] && ! pgrep -f "snakemake.*--profile profiles/local" >/dev/null; then
    echo "nashflow: removing the stale lock of an interrupted run"
    .venv/bin/snakemake --unlock
fi
.venv/bin/snakemake --profile profiles/local "$@"
.venv/bin/snakemake --profile profiles/local --report results/default/report.html "$@"
.venv/bin/python - <<'PY'
import pandas as pd
df = pd.read_csv("results/default/report/summary.csv")
cols = ["iteration", "mean_reward", "win_rate_vs_base", "win_rate_vs_previous", "mean_length"]
print(df[cols].to_string(index=False))
print("report: results/default/report.html")
PY
