"""The ``orchestration`` section: ``snakemake -n`` wall time, per-job overhead, the per-stage breakdown of a run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from perfkit.common import REPO, median


def run_snakemake(args_: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> float:
    exe = Path(sys.executable).parent / "snakemake"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args_], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args_)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return dt


def stage_breakdown(logs: Path) -> dict:
    """Seconds, max RSS and CPU time per stage of the first iteration from the ``benchmark:`` files."""
    out: dict[str, dict] = {}
    for f in sorted(logs.glob("iter1/**/*.benchmark.tsv")):
        rel = f.relative_to(logs / "iter1")
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.name.split(".")[0]
        row = next(csv.DictReader(open(f), delimiter="\t"))
        d = out.setdefault(stage, {"jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0, "cpu_seconds": 0.0})
        d["jobs"] += 1
        d["seconds"] += float(row["s"])
        d["max_rss_mb"] = max(d["max_rss_mb"], float(row.get("max_rss") or 0) if row.get("max_rss") != "-" else 0)
        d["cpu_seconds"] += float(row.get("cpu_time") or 0) if row.get("cpu_time") != "-" else 0
    total = sum(d["seconds"] for d in out.values()) or 1.0
    for d in out.values():
        d["share"] = d["seconds"] / total
    return out


def job_overhead(logs: Path) -> dict:
    """Per stage of a run's jobs (all iterations): jobs, and medians of the wall time (``benchmark:``
    file), the fixed cost before the job's body starts (``job start-up`` in its log: interpreter,
    Snakemake's script preamble, imports) and the body."""
    import re

    found: dict[str, dict[str, list[float]]] = {}
    for log_file in sorted(logs.rglob("*.log")):
        text = log_file.read_text(errors="replace")
        start, body = re.search(r"job start-up ([\d.]+) s", text), re.search(r"job body ([\d.]+) s", text)
        bench = log_file.with_name(log_file.name[:-4] + ".benchmark.tsv")
        if not (start and body and bench.exists()):
            continue
        parts = [p for p in log_file.relative_to(logs).with_suffix("").parts if not re.fullmatch(r"iter\d+", p)]
        stage = parts[0] if parts[0] in ("generate", "score", "logps") else "/".join(parts)
        d = found.setdefault(stage, {"seconds": [], "startup": [], "body": []})
        d["seconds"].append(float(next(csv.DictReader(open(bench), delimiter="\t"))["s"]))
        d["startup"].append(float(start.group(1)))
        d["body"].append(float(body.group(1)))
    return {stage: {"jobs": len(d["seconds"]), "seconds_median": median(d["seconds"]),
                    "startup_seconds_median": median(d["startup"]), "body_seconds_median": median(d["body"])}
            for stage, d in found.items()}


def bench_orchestration(args, work: Path, repeats: int) -> dict:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    big = work / "big.yaml"
    big.write_text(yaml.safe_dump({"iterations": 10, "shards": 8, "run": "bench",
                                   "prompts": {"path": str(REPO / "resources/prompts/default.jsonl")}}))
    snakefile = str(REPO / "Snakefile")
    dry_args = ["-s", snakefile, "-n", "--quiet", "--configfile", str(REPO / "config/config.yaml"), str(big)]
    # The SLURM executor plugin runs `scontrol show config` when Snakemake starts (any executor); where the
    # SLURM client is installed but no controller answers, that probe waits up to 10 s. Measured as
    # found, and with the probe answered at once (a stub `scontrol` that fails, as on a laptop).
    stub = work / "stub-bin"
    stub.mkdir(exist_ok=True)
    (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (stub / "scontrol").chmod(0o755)
    no_probe = {"PATH": f"{stub}{os.pathsep}{os.environ.get('PATH', '')}"}
    dry_found = [run_snakemake(dry_args, work) for _ in range(1 if args.quick else repeats)]
    dry = [run_snakemake(dry_args, work, env=no_probe) for _ in range(repeats)]
    # Python start-up and imports alone (Snakemake's CLI and nashflow's DAG-time modules, as the Snakefile
    # imports them: no torch).
    imports = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import snakemake.cli; import nashflow.plan"], check=True,
                       env={**os.environ, **no_probe})
        imports.append(time.perf_counter() - t0)
    # Snakemake's own per-job cost: N trivial shell jobs in one run, and 1, the difference per job.
    triv = work / "trivial"
    triv.mkdir(exist_ok=True)
    (triv / "Snakefile").write_text(
        "rule all:\n    input: expand('out/{i}.txt', i=range(int(config.get('count', 1))))\n"
        "rule one:\n    output: 'out/{i}.txt'\n    shell: 'echo {wildcards.i} > {output}'\n")
    per_job = []
    for _ in range(repeats):
        t1 = run_snakemake(["--cores", "1", "--forceall", "--quiet", "--config", "count=1"], triv, env=no_probe)
        t21 = run_snakemake(["--cores", "1", "--forceall", "--quiet", "--config", "count=21"], triv, env=no_probe)
        per_job.append((t21 - t1) / 20)
    # The workflow's own smallest job (the prompt split: a script job importing nashflow).
    split = []
    for rep in range(repeats):
        wd = work / f"split{rep}"
        wd.mkdir(exist_ok=True)
        split.append(run_snakemake(["-s", snakefile, "--cores", "1", "--quiet", "--configfile",
                                    str(REPO / "config/config.yaml"), str(big), "--until", "split_prompts"], wd,
                                   env=no_probe)
                     - dry[0])
    res = {"dry_run_10x8_seconds": dry, "dry_run_10x8_seconds_median": median(dry),
           "dry_run_10x8_seconds_as_found": dry_found, "dry_run_10x8_seconds_as_found_median": median(dry_found),
           "imports_seconds_median": median(imports),
           "snakemake_per_job_seconds": per_job, "snakemake_per_job_seconds_median": median(per_job),
           "split_prompts_job_seconds": split, "split_prompts_job_seconds_median": median(split)}
    if args.stage_logs and Path(args.stage_logs).is_dir():
        res["stages_iteration1"] = stage_breakdown(Path(args.stage_logs))
        res["job_overhead"] = job_overhead(Path(args.stage_logs))
        res["stages_from"] = str(args.stage_logs)
    return res
