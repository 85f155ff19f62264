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


def plot_training(metric_csvs: list[str], path: str, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    offset = 0
    for it, p in enumerate(metric_csvs, start=1):
        d = pd.read_csv(p)
        if d.empty:
            continue
        x = d.step + offset
        axes[0].plot(x, d.loss, label=f"iter {it}")
        axes[1].plot(x, d.rewards_margin, label=f"iter {it}")
        axes[2].plot(x, d.rewards_accuracy, label=f"iter {it}")
        offset = int(x.max())
    for ax, name in zip(axes, ("loss", "reward margin (β·Δ log-ratio)", "reward accuracy")):
        ax.set(xlabel="optimizer step (all iterations)", title=name)
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
