"""The benchmark command runs in its quick mode and writes a complete record (no speed is asserted:
timings do not belong in tests; the ratios are read by people, see the README)."""

import json
import math
import subprocess
import sys

from conftest import REPO


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_perf_quick_mode_writes_every_section(tmp_path, full_run):
    out = tmp_path / "perf.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "perf.py"), "--quick", "--out", str(out),
                           "--stage-logs", str(full_run / "logs" / "tiny")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert res["quick"] and res["repeats"] >= 3 and res["versions"]["trl"]
    r = res["results"]
    assert set(r) == {"train", "logps", "generate", "orchestration", "scaling"}
    for section, key in (("train", "speedup_vs_trl"), ("logps", "speedup_vs_trl"), ("generate", "speedup_vs_generate")):
        assert r[section][key] > 0
    assert len(r["train"]["nashflow_tokens_per_s_runs"]) == len(r["train"]["trl_tokens_per_s_runs"]) == 3
    # both sides read the same pairs: TRL's reference log-probs agree with ours
    assert r["logps"]["max_abs_diff_vs_trl_chosen_logp"] < 1e-3
    assert r["logps"]["real_tokens"] == r["logps"]["trl_real_tokens"]
    g = r["generate"]
    assert g["nashflow_tokens"] and g["generate_batched_tokens"] and g["vllm_cpu"] == {"skipped": "quick mode"}
    orch = r["orchestration"]
    assert orch["dry_run_10x8_seconds_median"] > 0
    stages = orch["stages_iteration1"]
    assert {"generate", "score", "train"} <= set(stages) and stages["generate"]["jobs"] == 2
    assert math.isclose(sum(s["share"] for s in stages.values()), 1.0, rel_tol=1e-6)
    # every job's log holds its start-up and body time: a fixed cost per stage, for every stage that ran
    overhead = orch["job_overhead"]
    assert {"generate", "score", "logps", "train", "build_pairs", "prompts/split_prompts"} <= set(overhead)
    assert overhead["generate"]["jobs"] == 4 and all(0 < d["startup_seconds_median"] < d["seconds_median"]
                                                     for d in overhead.values())
    sc = r["scaling"]
    assert [p["length"] for p in sc["logps_vs_length"]] == res["settings"]["scaling"]["lengths"]
    assert [p["batch_pairs"] for p in sc["train_vs_batch"]] == res["settings"]["scaling"]["train_batches"]
    assert all(math.isfinite(x) for x in _numbers(r))
    assert "| training step" in res["table"] and "TRL" in proc.stdout
