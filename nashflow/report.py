"""Plots and tables over iterations for ``snakemake --report``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, *axes) -> None:
    """Grid on every axis, tight layout, write the PNG, free the figure."""
    plt = _plt()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(metric_files: list[str]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in metric_files]
    df = pd.DataFrame(rows).sort_values("iteration").reset_index(drop=True)
    for col in [c for c in df.columns if c.endswith("_ci")]:
        df[col + "_low"] = pd.to_numeric(pd.Series([v[0] for v in df[col]]), errors="coerce").astype(float)
        df[col + "_high"] = pd.to_numeric(pd.Series([v[1] for v in df[col]]), errors="coerce").astype(float)
        df = df.drop(columns=col)
    for col in ("mean_reward", "base_mean_reward"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)


def plot_reward(df: pd.DataFrame, path: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if df.mean_reward.isna().all():
        _no_data(ax, "A preference scorer (judge, GPM, PairRM) gives no per-response reward:\n"
                     "see the win rates, judged with both response orders.")
    ax.errorbar(df.iteration, df.mean_reward, yerr=[df.mean_reward - df.mean_reward_ci_low,
                                                   df.mean_reward_ci_high - df.mean_reward],
                marker="o", capsize=4)
    ax.set(xlabel="iteration (0 = base model)", ylabel="mean held-out reward", title=title)
    ax.set_xticks(df.iteration)
    _save(fig, path, ax)


def plot_win_rates(df: pd.DataFrame, path: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in (("base", "tab:blue"), ("previous", "tab:orange")):
        col = f"win_rate_vs_{name}"
        d = df[df.iteration > 0]
        ax.errorbar(d.iteration, d[col], yerr=[d[col] - d[col + "_ci_low"], d[col + "_ci_high"] - d[col]],
                    marker="o", capsize=4, label=f"vs {name}", color=color)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set(xlabel="iteration", ylabel="held-out win rate", ylim=(0, 1), title=title)
    ax.set_xticks(df.iteration[df.iteration > 0])
    ax.legend()
    _save(fig, path, ax)


def plot_length(df: pd.DataFrame, path: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df.iteration, df.mean_length, marker="o", label="mean length (tokens)")
    ax.set(xlabel="iteration (0 = base model)", ylabel="mean response tokens", title=title)
    ax.set_xticks(df.iteration)
    ax2 = ax.twinx()
    ax2.plot(df.iteration, df.finished_fraction, marker="s", color="tab:green", label="finished (EOS)")
    ax2.set_ylabel("fraction finished with EOS")
    ax2.set_ylim(0, 1.05)
    fig.legend(loc="lower right")
    _save(fig, path, ax)


TRAIN_PANELS = (("loss", "loss"), ("rewards_margin", "reward margin (β·Δ log-ratio)"),
                ("rewards_accuracy", "reward accuracy"), ("kl_chosen", "KL to reference (chosen, nats/seq.)"))


def _train_curves(metric_csvs: list[str]) -> pd.DataFrame:
    """Training rows of consecutive iterations on one axis of optimizer steps."""
    parts, offset = [], 0
    for it, p in enumerate(metric_csvs, start=1):
        d = pd.read_csv(p)
        if d.empty:
            continue
        d = d.assign(iteration=it, global_step=d.step + offset)
        offset = int(d.global_step.max())
        parts.append(d)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["iteration", "global_step"])


def plot_training(metric_csvs: list[str], path: str, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(TRAIN_PANELS), figsize=(15, 3.6))
    d = _train_curves(metric_csvs)
    for it, g in d.groupby("iteration"):
        for ax, (col, _) in zip(axes, TRAIN_PANELS):
            if col in g:
                ax.plot(g.global_step, g[col], label=f"iter {it}")
    for ax, (_, name) in zip(axes, TRAIN_PANELS):
        ax.set(xlabel="optimizer step (all iterations)", title=name)
    if len(d):
        axes[0].legend()
    fig.suptitle(title)
    _save(fig, path, *axes)


def plot_objectives(responses: list[str], names: list[str], path: str, title: str) -> None:
    """Per-objective held-out rewards per iteration. With a MOODPO evaluation grid every weight
    vector is one point (the Pareto front of that iterate); otherwise one point per iterate."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    cols = [f"reward_{n}" for n in names]
    for it, p in enumerate(responses):
        d = pd.read_parquet(p)
        if not set(cols) <= set(d.columns):
            _no_data(ax, "no per-objective rewards (a preference scorer)")
            break
        if len(cols) >= 2:
            g = d.groupby("sample_index")[cols[:2]].mean().sort_values(cols[0])
            ax.plot(g[cols[0]], g[cols[1]], marker="o", label=f"iteration {it}" if it else "base")
        else:
            ax.scatter(d["token_count"].mean(), d[cols[0]].mean(), label=f"iteration {it}" if it else "base")
    if len(cols) >= 2:
        ax.set(xlabel=f"mean {names[0]} reward", ylabel=f"mean {names[1]} reward")
    else:
        ax.set(xlabel="mean response length (tokens)", ylabel=f"mean {names[0]} reward")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _save(fig, path, ax)


# ---- comparison of several runs ------------------------------------------------------------------


def comparison_table(metrics: dict[str, list[str]]) -> pd.DataFrame:
    """Per-iteration held-out metrics of every run (``run`` column first)."""
    parts = [summary_table(files).assign(run=run) for run, files in metrics.items()]
    df = pd.concat(parts, ignore_index=True)
    return df[["run"] + [c for c in df.columns if c != "run"]]


def plot_runs(df: pd.DataFrame, col: str, path: str, *, ylabel: str, title: str, parity: bool = False) -> None:
    """One line per run over iterations, with its 95% interval as error bars where there is one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if df[col].isna().all():
        _no_data(ax, f"no {ylabel} (a preference scorer gives no per-response reward: see the win rates)")
    for run, d in df.groupby("run", sort=False):
        d = d[d.iteration > 0] if parity else d
        if f"{col}_ci_low" in d:
            yerr = [d[col] - d[f"{col}_ci_low"], d[f"{col}_ci_high"] - d[col]]
            ax.errorbar(d.iteration, d[col], yerr=yerr, marker="o", capsize=4, label=run, alpha=0.85)
        else:
            ax.plot(d.iteration, d[col], marker="o", label=run)
    if parity:
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_ylim(0, 1)
    ax.set(xlabel="iteration" + ("" if parity else " (0 = base model)"), ylabel=ylabel, title=title)
    ax.set_xticks(sorted(df.iteration.unique()[df.iteration.unique() > 0] if parity else df.iteration.unique()))
    ax.legend(fontsize=8)
    _save(fig, path, ax)


def plot_runs_training(train: dict[str, list[str]], path: str, title: str) -> None:
    """Training curves of every run, iterations concatenated on one step axis."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(TRAIN_PANELS), figsize=(15, 3.6))
    for run, files in train.items():
        d = _train_curves(files)
        for ax, (col, _) in zip(axes, TRAIN_PANELS):
            if col in d and len(d):
                ax.plot(d.global_step, d[col], label=run)
    for ax, (_, name) in zip(axes, TRAIN_PANELS):
        ax.set(xlabel="optimizer step (all iterations)", title=name)
    losses = [v for line in axes[0].get_lines() for v in line.get_ydata() if v == v]
    if len(train) > 1 and losses and max(map(abs, losses)) > 100:  # losses of different methods differ in scale
        lo, hi = min(losses), max(losses)
        if lo > 0:
            axes[0].set_yscale("log")
            axes[0].set_ylim(lo / 2, hi * 2)
        else:
            axes[0].set_yscale("symlog", linthresh=1.0)
            axes[0].set_ylim(lo * 2 if lo < 0 else 0, hi * 2)
        axes[0].set_title("loss (log scale: scales differ between losses)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path, *axes)


def plot_win_matrix(matrix: pd.DataFrame, table: pd.DataFrame, path: str, title: str) -> None:
    """Heat map of row-vs-column held-out win rates, each cell with its 95% interval."""
    plt = _plt()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.6 * n + 2.5, 1.2 * n + 1.5))
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu", vmin=0, vmax=1)
    ci = {}
    for r in table.itertuples():
        ci[(r.player_a, r.player_b)] = (r.ci_low, r.ci_high)
        ci[(r.player_b, r.player_a)] = (1 - r.ci_high, 1 - r.ci_low)
    for i, a in enumerate(matrix.index):
        for j, b in enumerate(matrix.columns):
            v = matrix.iloc[i, j]
            text = f"{v:.2f}" if i == j else f"{v:.2f}\n[{ci[(a, b)][0]:.2f}, {ci[(a, b)][1]:.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if abs(v - 0.5) > 0.3 else "black")
    ax.set_xticks(range(n), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ax.set(xlabel="opponent", ylabel="player (row wins against column)", title=title)
    fig.colorbar(im, ax=ax, label="win rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples_html(columns: dict[str, str], path: str, *, n: int = 8, title: str = "Example held-out responses") -> None:
    """An HTML table: n held-out prompts, one column per checkpoint (name → responses table)."""
    import html

    tables = {name: pd.read_parquet(p) for name, p in columns.items()}
    first = next(iter(tables.values()))
    rows = first.sort_values(["prompt_id", "sample_index"]).groupby("prompt_id").head(1).head(n)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["prompt", *columns])
    body = []
    for _, r in rows.iterrows():
        msgs = r["raw_messages"] if "raw_messages" in r and r["raw_messages"] is not None else r["messages"]
        prompt = " ".join(m["content"] for m in msgs if m["role"] == "user")
        cells = [f"<td class='p'>{html.escape(prompt)}</td>"]
        for d in tables.values():
            hit = d[(d.prompt_id == r.prompt_id) & (d.sample_index == r.sample_index)]
            text = hit.response.iloc[0] if len(hit) else ""
            rew = hit.reward.iloc[0] if len(hit) and "reward" in hit and pd.notna(hit.reward.iloc[0]) else None
            badge = f"<div class='r'>reward {rew:.3f}</div>" if rew is not None else ""
            cells.append(f"<td>{html.escape(str(text))}{badge}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;table-layout:fixed;width:100%}"
             "td,th{border:1px solid #ccc;padding:6px;vertical-align:top;word-wrap:break-word}"
             "th{background:#f0f0f0} td.p{font-weight:600;background:#fafafa} .r{color:#666;font-size:11px;margin-top:4px}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>"
           f"<table><tr>{head}</tr>{''.join(body)}</table></body></html>\n")
    from nashflow.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")


def _simplex_xy(p):
    """Barycentric (p_0, p_1, p_2) → plane: action 0 at (0, 0), 1 at (1, 0), 2 at (½, √3/2)."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    p = p / p.sum(-1, keepdims=True)
    return p[..., 1] + 0.5 * p[..., 2], (3 ** 0.5 / 2) * p[..., 2]


def plot_game(df: pd.DataFrame, nash, path: str, title: str) -> None:
    """Matrix-game trajectories (``game.csv`` rows with a ``run`` column): total variation to the Nash
    equilibrium and exploitability (solid; the KL-regularised one dashed where defined) over
    iterations, and for 3 actions the action distributions on the simplex (base ○, last iterate ■)."""
    import numpy as np

    plt = _plt()
    actions = [c for c in df.columns if c.startswith("p_") and c != "p_none"]
    simplex = len(actions) == 3
    fig, axes = plt.subplots(1, 3 if simplex else 2, figsize=(15 if simplex else 10, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (run, d) in enumerate(df.groupby("run", sort=False)):
        c = colors[n % len(colors)]
        axes[0].plot(d.iteration, d.tv_to_nash, marker="o", ms=3, color=c, label=run)
        axes[1].plot(d.iteration, d.exploitability, marker="o", ms=3, color=c, label=run)
        if "exploitability_regularised" in d and d.exploitability_regularised.notna().any():
            axes[1].plot(d.iteration, d.exploitability_regularised, ls="--", color=c, alpha=0.7)
        if simplex:
            x, y = _simplex_xy(d[actions].to_numpy())
            axes[2].plot(x, y, marker=".", ms=4, lw=1, color=c, alpha=0.8, label=run)
            axes[2].plot(x[:1], y[:1], "o", mfc="none", color=c)
            axes[2].plot(x[-1:], y[-1:], "s", color=c)
    axes[0].set(xlabel="iteration (0 = base model)", ylabel="total variation to Nash", title=title)
    axes[1].set(xlabel="iteration (0 = base model)", ylabel="exploitability max_a P(a ≻ π) − ½",
                title="exploitability (dashed: regularised game)")
    axes[1].axhline(0, color="grey", lw=0.8)
    if simplex:
        ax = axes[2]
        ax.plot([0, 1, 0.5, 0], [0, 0, 3 ** 0.5 / 2, 0], color="grey", lw=1)
        for a, (x, y) in enumerate([(0, 0), (1, 0), (0.5, 3 ** 0.5 / 2)]):
            ax.annotate(f"action {a}", (x, y), textcoords="offset points", xytext=(0, 6 if a == 2 else -12),
                        ha="center", fontsize=8)
        x, y = _simplex_xy(np.asarray(nash))
        ax.plot([x], [y], "*", color="black", ms=14, label="Nash")
        ax.set_aspect("equal")
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.12, 0.95)
        ax.axis("off")
        ax.set_title("action distributions (○ base, ■ last iterate)")
        ax.legend(fontsize=7, loc="upper right")
    axes[0].legend(fontsize=7)
    _save(fig, path, *axes[:2])
