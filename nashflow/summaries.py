"""A run's report and the comparison of runs: tables, plots, examples side by side, configs.

Summaries read the whole run config (they produce no model or table that another job depends on).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nashflow.config import run_config
from nashflow.io import atomic_path, checkpoint_name, provenance, read_provenance, read_table, write_table
from nashflow.settings import scorer_config

log = logging.getLogger(__name__)


def run_report(cfg: dict, *, metrics: list[str], train_metrics: list[str], responses: list[str], models: list[str],
           out: dict[str, str]) -> None:
    """One run's report: summary table, plots, example responses side by side, config and provenance."""
    from nashflow import report as R

    df = R.summary_table(metrics)
    title = f"run '{cfg['run']}': {cfg['algorithm']['name']}"
    R.plot_objectives(responses, scorer_config(cfg).objective_names(), out["objectives"], title)
    R.plot_reward(df, out["reward"], title)
    R.plot_win_rates(df, out["winrate"], title)
    R.plot_length(df, out["length"], title)
    R.plot_training(train_metrics, out["training"], title)
    R.examples_html({"base" if t == 0 else f"iteration {t}": p for t, p in enumerate(responses)}, out["examples"],
                    title=f"Held-out prompts: base model and every iterate of run '{cfg['run']}'")
    write_yaml(run_record(cfg, models), out["config"], html=out["config_html"])
    with atomic_path(out["table"]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def run_record(cfg: dict, models: list[str]) -> dict:
    """A run's resolved config and each trained iterate's provenance (parents, roles, steps, versions)."""
    prov = {}
    for m in models:
        p = read_provenance(m)
        prov[checkpoint_name(m)] = {k: v for k, v in p.items() if k != "config"}
    return {"run": cfg["run"], "config": {k: v for k, v in cfg.items() if k != "runs"}, "checkpoints": prov}


def write_yaml(obj, path: str, html: str | None = None) -> None:
    """YAML at ``path``; with ``html`` also a page showing it (the report displays HTML, not YAML)."""
    import html as H

    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if html:
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{H.escape(Path(path).name)}</title></head>"
                f"<body style='font-family:monospace;font-size:12px'><pre>{H.escape(text)}</pre></body></html>\n")
        with atomic_path(html) as tmp:
            tmp.write_text(page, encoding="utf-8")


def compare_runs(cfg: dict, *, files: dict[str, dict[str, list[str]]], out: dict[str, str],
            base_model_dir: str | None = None, threads: int | None = None) -> None:
    """Cross-run comparison with the top-level scorer: per-iteration metrics of every run, a round-robin
    of the base model and every run's final iterate, plots, examples side by side, configs.

    ``files``: run → {"metrics", "responses" (iteration 0 first), "train_metrics", "models"}.
    Runs evaluated on a MOODPO weight grid are in the plots but not in the round-robin (their
    held-out rows are per weight vector).
    """
    from nashflow import report as R
    from nashflow.evaluate import round_robin, win_matrix

    short = {run: run.split("/")[-1] for run in files}
    df = R.comparison_table({short[r]: f["metrics"] for r, f in files.items()})
    conditioned = {r for r in files if run_config(cfg, r)["algorithm"]["conditioning"]}
    first = next((f for r, f in files.items() if r not in conditioned), next(iter(files.values())))
    players = {"base": read_table(first["responses"][0])}
    skipped = []
    for run, f in files.items():
        if run in conditioned:
            skipped.append(short[run])
            continue
        players[f"{short[run]} (iter {len(f['responses']) - 1})"] = read_table(f["responses"][-1])
    scfg = scorer_config(cfg)
    comp = None
    if scfg.kind == "preference":
        from nashflow.precision import stage_compute
        from nashflow.scorers import CompositeScorer
        from nashflow.torchutil import set_threads

        set_threads(threads)
        comp = CompositeScorer(scfg, base_model_dir=base_model_dir, compute=stage_compute(cfg, "scoring")).compare
    table = round_robin(players, compare=comp, seed=cfg["evaluation"]["seed"])
    if skipped:
        log.info("not in the round-robin (evaluated per weight vector): %s", ", ".join(skipped))
    write_table(table, out["roundrobin"], provenance(parents={n: str(n) for n in players}, config=cfg["scorer"],
                                                      skipped=skipped))
    names = list(players)
    title = f"comparison '{cfg['run']}'"
    R.plot_win_matrix(win_matrix(table, names), table, out["roundrobin_plot"], title)
    R.plot_runs(df, "mean_reward", out["reward"], ylabel="mean held-out reward", title=title)
    R.plot_runs(df, "win_rate_vs_base", out["winrate"], ylabel="held-out win rate vs base", title=title,
                parity=True)
    R.plot_runs(df, "mean_length", out["length"], ylabel="mean response tokens", title=title)
    R.plot_runs_training({short[r]: f["train_metrics"] for r, f in files.items()}, out["training"], title)
    columns = {"base": first["responses"][0]}
    for run, f in files.items():
        columns.update({f"{short[run]} iter {t}": p for t, p in enumerate(f["responses"]) if t > 0})
    R.examples_html(columns, out["examples"], title=f"Held-out prompts: base and every iterate of every run ({title})")
    write_yaml({"comparison": cfg["run"], "judge": cfg["scorer"],
                "runs": {short[r]: run_record(run_config(cfg, r), f["models"]) for r, f in files.items()}},
               out["config"], html=out["config_html"])
    with atomic_path(out["table"]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
