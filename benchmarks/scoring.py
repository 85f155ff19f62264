"""Scoring throughput per backend, side by side in one process (ratios are what count here).

Backends: the programmatic scorers (sentiment, length, regex), a tiny random sequence-classification
reward model, a tiny random causal-LM judge and a tiny random GPM (the test fixtures' sizes), and
on the embedded SmolLM2-135M: the LLM judge (every ordered pair of K samples) and, for scale, a
reward model with the SmolLM2 backbone (a random score head: its speed, not its scores, is what is
measured). Inputs: prompts from the shipped prompt file, responses taken from other prompts
(15-40 words, like the default's 40-token samples).

    python benchmarks/scoring.py [--quick] [--base-model results/base_model] [--out benchmarks/results/scoring.json]

Writes medians of ``--repeats`` runs (≥ 3) with machine, versions and settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def workload(n_prompts: int, k: int) -> pd.DataFrame:
    rows = [json.loads(x) for x in (REPO / "resources/prompts/default.jsonl").read_text().splitlines()]
    texts = [r["prompt"] for r in rows]
    out = []
    for p in range(n_prompts):
        for i in range(k):
            resp = " ".join(texts[(p * 7 + i * 13 + j) % len(texts)] for j in range(2))
            out.append({"prompt_id": f"p{p}", "sample_index": i, "response": resp, "finish_reason": "stop",
                        "messages": [{"role": "user", "content": texts[p]}]})
    return pd.DataFrame(out)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def naive_judge_peer(judge, df: pd.DataFrame, k: int, repeats: int, judge_sec: float) -> dict:
    """Peer in the same run: the same judge queries, one unbatched full forward each (logits for
    every position), as a per-pair loop would do."""
    import torch

    queries = []
    for _, g in df.groupby("prompt_id", sort=True):
        instr, resp = g.messages.iloc[0][0]["content"], list(g.response)
        queries += [(instr, a, b) for i, a in enumerate(resp) for j, b in enumerate(resp) if i != j]
    ctx = [torch.tensor([judge.encode_query(*q)[0]]) for q in queries]

    def loop():
        with torch.inference_mode():
            for ids in ctx:
                judge.model(input_ids=ids.to(judge.device)).logits[0, -1].log_softmax(-1)

    sec = timed(loop, repeats)
    return {"naive_loop_seconds_median": round(sec, 4), "speedup_vs_naive_loop": round(sec / judge_sec, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small workload (CI)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-model", default=str(REPO / "results" / "base_model"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scoring.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from nashflow.io import package_versions
    from nashflow.scorers import CompositeScorer, ScorerConfig
    from nashflow.testing import build_tiny_gpm, build_tiny_judge, build_tiny_reward_model

    torch.set_num_threads(args.threads)
    k = 4
    n_small, n_big = (8, 2) if args.quick else (32, 6)
    tmp = Path(tempfile.mkdtemp(prefix="nashflow-bench-"))
    tiny = {"rm": build_tiny_reward_model(tmp / "rm"), "judge": build_tiny_judge(tmp / "judge"),
            "gpm": build_tiny_gpm(tmp / "gpm")}
    cases = [
        ("sentiment", {"type": "sentiment"}, n_small, "tiny"),
        ("length", {"type": "length"}, n_small, "tiny"),
        ("regex", {"type": "regex", "args": {"pattern": r"\d"}}, n_small, "tiny"),
        ("reward_model", {"type": "reward_model", "args": {"model": str(tiny["rm"])}}, n_small, "tiny"),
        ("judge", {"type": "judge", "args": {"model": str(tiny["judge"])}}, n_small, "tiny"),
        ("gpm", {"type": "gpm", "args": {"model": str(tiny["gpm"])}}, n_small, "tiny"),
    ]
    base = Path(args.base_model)
    if (base / "config.json").exists():
        cases += [("judge", {"type": "judge", "args": {"model": str(base)}}, n_big, "SmolLM2-135M"),
                  ("reward_model", {"type": "reward_model", "args": {"model": str(base)}}, n_big, "SmolLM2-135M")]
    else:
        print(f"no base model at {base}: SmolLM2 cases skipped (run the workflow's prepare_model first)")
    results = []
    for name, comp, n_prompts, model in cases:
        df = workload(n_prompts, k)
        t0 = time.perf_counter()
        scorer = CompositeScorer(ScorerConfig.from_dict({"components": [comp]}))
        load_s = time.perf_counter() - t0
        scorer.score_table(df.head(k))  # warm-up
        if hasattr(scorer.parts[0][1], "tokens_read"):
            scorer.parts[0][1].tokens_read = 0
        sec = timed(lambda: scorer.score_table(df), args.repeats)
        judged = n_prompts * k * (k - 1) if scorer.kind == "preference" and name != "gpm" else None
        row = {"backend": name, "model": model, "prompts": n_prompts, "k": k, "samples": len(df),
               "seconds_median": round(sec, 4), "samples_per_s": round(len(df) / sec, 2),
               "load_seconds": round(load_s, 2)}
        if judged:
            row["ordered_pairs_per_s"] = round(judged / sec, 2)
        if hasattr(scorer.parts[0][1], "fallbacks"):
            judge = scorer.parts[0][1]
            row["judge_label_cases"] = dict(judge.fallbacks)
            row["context_tokens_per_s"] = round(judge.tokens_read / args.repeats / sec, 1)
        if name == "judge" and model != "tiny":
            row.update(naive_judge_peer(scorer.parts[0][1], df, k, args.repeats, sec))
        results.append(row)
        print(json.dumps(row))
    out = {"benchmark": "scoring", "quick": args.quick, "repeats": args.repeats, "threads": args.threads,
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpus": __import__("os").cpu_count(), "cuda": torch.cuda.is_available()},
           "versions": package_versions(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
