"""Exact evaluation of iterates on a matrix game (the ``matrix_game`` scorer), without sampling noise.

An iterate's action distribution is its next-token distribution at the first response position,
mapped to actions by the scorer's rule and averaged over the held-out prompts:
``p_a = mean_prompts Σ_{v: action(v) = a} π(v | prompt)``, and ``p_none`` the mass of tokens that play
no action. Per iterate (0 = the base model): total variation to the game's Nash equilibrium,
exploitability ``max_a (Pπ)_a − ½`` (half the symmetric duality gap), and where the method solves a
KL-regularised game, the exploitability in that game around the run's reference (see
:func:`regularisation`). Everything is computed in the game extended by "no action"
(``nashflow.game.with_no_action``), whose equilibrium is the matrix's with p_none = 0.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from nashflow import game as G

log = logging.getLogger(__name__)


def regularisation(algo: dict[str, Any]) -> tuple[str, float] | None:
    """``(reference role, τ)`` of the KL-regularised game a method's fixed point solves, in the units
    of P, or None where it has none here:

    * INPO / COMAL (``inpo`` loss): log π_{t+1} = ρ·log μ + (1 − ρ)·log π_t + P(· ≻ π_t)/η at the
      optimum of the regression, whose fixed point is π ∝ μ·exp(Pπ / τ) with τ = ρ·η, μ the anchor;
    * MNPO (``mnpo`` loss): the same with the base reference and the history mixture, τ = ρ·η;
    * Nash-MD: τ = β around the base reference.

    Methods whose reference is the previous iterate (SPPO, Iter-IPO, DPO with ``reference:
    previous``) regularise towards a moving target, and DPO's β regularises a Bradley-Terry reward
    in logit units, not P: none of them defines a fixed regularised game here.
    """
    from nashflow.methods import loss_spec

    params, how = algo.get("params") or {}, loss_spec(algo["loss"]).game_tau
    if how == "ratio_eta" and algo["reference"] in ("anchor", "base"):
        return algo["reference"], float(params["ratio"]) * float(params["eta"])
    if how == "beta" and algo["reference"] == "base":
        return "base", float(algo["beta"])
    return None


def action_distribution(model, tok, prompts: pd.DataFrame, actions: np.ndarray, n_actions: int, *,
                        max_prompt_length: int, batch_size: int = 64) -> np.ndarray:
    """``[p_0, …, p_{A−1}, p_none]`` of a model over the prompts (table with ``prompt_id``, ``messages``)."""
    import torch

    from nashflow.generation.generate import SamplingConfig, encode_prompts

    scfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=1, max_prompt_length=max_prompt_length)
    encoded = [ids for _, _, ids in encode_prompts(tok, prompts, scfg, None)]
    device = next(model.parameters()).device
    index = torch.as_tensor(np.where(actions < 0, n_actions, actions), device=device)
    total = torch.zeros(n_actions + 1, dtype=torch.float64, device=device)
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start:start + batch_size]
            width = max(map(len, rows))
            x = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(rows), width), dtype=torch.long)
            for j, ids in enumerate(rows):  # left padding and positions as in sampling
                x[j, width - len(ids):] = torch.tensor(ids)
                attn[j, width - len(ids):] = 1
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=x.to(device), attention_mask=attn.to(device),
                           position_ids=pos.to(device)).logits[:, -1, :].double()
            probs = torch.softmax(logits, -1)[:, : len(actions)]
            total.index_add_(0, index, probs.sum(0))
    return (total / len(encoded)).cpu().numpy()


def game_row(p: np.ndarray, P_ext: np.ndarray, nash_ext: np.ndarray, reg: tuple[np.ndarray, float] | None) -> dict:
    """Metrics of one action distribution ``p`` (over the actions and "no action")."""
    row = {"tv_to_nash": G.tv(p, nash_ext), "exploitability": G.exploitability(p, P_ext),
           "exploitability_regularised": np.nan, "tau": np.nan}
    if reg is not None:
        mu, tau = reg
        row["exploitability_regularised"] = G.regularised_exploitability(p, P_ext, mu, tau)
        row["tau"] = tau
    return row


def game_table(cfg: dict, models: list[str], eval_prompts: str, base_model_dir: str) -> pd.DataFrame:
    """One row per checkpoint (``models[0]`` the base, then iterates 1..T) of one run:
    ``iteration, tv_to_nash, exploitability, exploitability_regularised, tau, p_0 … p_{A−1}, p_none,
    checkpoint``. The game is the (evaluation) config's matrix_game scorer."""
    from nashflow.io import checkpoint_name, read_table
    from nashflow.methods import iteration_roles
    from nashflow.models import default_device, load_model, load_tokenizer
    from nashflow.scorers.matrix_game import MatrixGameScorer
    from nashflow.settings import eval_sampling_config, scorer_config

    comp = scorer_config(cfg).components[0]
    scorer = MatrixGameScorer(**comp.args, base_model_dir=base_model_dir, component=comp.label)
    A = scorer.n_actions
    nash = np.append(G.nash_equilibrium(scorer.P), 0.0)
    prompts = read_table(eval_prompts)
    max_prompt = eval_sampling_config(cfg).max_prompt_length
    dists = []
    for path in models:
        model = load_model(path, device=default_device())
        dists.append(action_distribution(model, load_tokenizer(path), prompts, scorer.actions, A,
                                         max_prompt_length=max_prompt))
    algo = cfg["algorithm"]
    reg = regularisation(algo)
    rows = []
    for t, (p, path) in enumerate(zip(dists, models)):
        ref = None
        if reg is not None:  # iterate t solved iteration t's game (the base: iteration 1's)
            ref = (dists[iteration_roles(max(t, 1), algo)["reference"]], reg[1])
        rows.append({"iteration": t, **game_row(p, scorer.P_ext, nash, ref),
                     **{f"p_{a}": float(p[a]) for a in range(A)}, "p_none": float(p[A]),
                     "checkpoint": checkpoint_name(path)})
    return pd.DataFrame(rows)


def game_eval(cfg: dict, *, models: list[str], eval_prompts: str, base_model_dir: str, out_csv: str,
              out_plot: str, threads: int | None = None) -> None:
    """``results/<run>/report/game.csv`` and its plot (trajectory of one run)."""
    from nashflow import report as R
    from nashflow.io import atomic_path
    from nashflow.torchutil import set_threads

    set_threads(threads)
    df = game_table(cfg, models, eval_prompts, base_model_dir)
    last = df.iloc[-1]
    log.info("last iterate: TV to Nash %.4f, exploitability %.4f (base: %.4f, %.4f)", last.tv_to_nash,
             last.exploitability, df.tv_to_nash.iloc[0], df.exploitability.iloc[0])
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    R.plot_game(df.assign(run=cfg["run"].split("/")[-1]), nash_of(cfg), out_plot,
                title=f"run '{cfg['run']}': {cfg['algorithm']['name']}")


def nash_of(cfg: dict) -> np.ndarray:
    """The Nash equilibrium of the config's matrix_game scorer (over the actions)."""
    comp = cfg["scorer"]["components"][0]
    return G.nash_equilibrium(G.check_preference_matrix(comp["args"]["matrix"]))


def game_compare(cfg: dict, *, files: dict[str, str], out_csv: str, out_plot: str) -> None:
    """Every run's game.csv with a ``run`` column (``results/<name>/compare/game.csv``) and one plot."""
    from nashflow import report as R
    from nashflow.io import atomic_path

    df = pd.concat([pd.read_csv(f).assign(run=run.split("/")[-1]) for run, f in files.items()], ignore_index=True)
    df = df[["run"] + [c for c in df.columns if c != "run"]]
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    R.plot_game(df, nash_of(cfg), out_plot, title=f"comparison '{cfg['run']}'")


__all__ = ["regularisation", "action_distribution", "game_row", "game_table", "game_eval", "game_compare", "nash_of"]
