"""Generation, log-probs and training on the tiny random model."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from nashflow.batching import length_batches
from nashflow.generation.generate import SamplingConfig, encode_prompt, generate_samples
from nashflow.io import read_provenance, read_table, write_table
from nashflow.logps import encode_pair_side, encode_pairs, sequence_logps
from nashflow.settings import LossConfig, TrainConfig
from nashflow.training import train
from nashflow.training.batches import is_validation

PROMPTS = pd.DataFrame({
    "prompt_id": ["a", "b", "c"],
    "messages": [[{"role": "user", "content": t}] for t in
                 ("Write a happy note", "What is the weather like today in a small town?", "Hi")],
})


def test_generation_is_seeded_and_complete(tiny_model):
    model, tok = tiny_model
    cfg = SamplingConfig(samples_per_prompt=3, max_new_tokens=8, temperature=1.0, batch_size=4)
    a = generate_samples(model, tok, PROMPTS, cfg, seed=1, generator="base", progress=False)
    b = generate_samples(model, tok, PROMPTS, cfg, seed=1, generator="base", progress=False)
    c = generate_samples(model, tok, PROMPTS, cfg, seed=2, generator="base", progress=False)
    assert len(a) == 9 and set(a.columns) >= {"prompt_id", "messages", "sample_index", "response", "token_count",
                                              "finish_reason", "seed", "generator"}
    assert a.response.tolist() == b.response.tolist()
    assert a.response.tolist() != c.response.tolist()
    assert set(a.finish_reason) <= {"stop", "length"}
    assert (a.token_count <= 8).all()


def test_greedy_generation_ignores_batching(tiny_model):
    model, tok = tiny_model
    one = generate_samples(model, tok, PROMPTS, SamplingConfig(samples_per_prompt=1, max_new_tokens=6,
                                                               temperature=0, batch_size=1), seed=0,
                           generator="g", progress=False)
    many = generate_samples(model, tok, PROMPTS, SamplingConfig(samples_per_prompt=1, max_new_tokens=6,
                                                                temperature=0, batch_size=8), seed=0,
                            generator="g", progress=False)
    assert one.response.tolist() == many.response.tolist()


def test_decoding_loop_is_generate_when_greedy(peaked_models):
    """One prefill per prompt, its cache repeated K times into reserved layers: greedy tokens equal
    transformers' ``generate`` on K left-padded copies of each prompt."""
    from nashflow.generation.decode import sample_tokens
    from nashflow.generation.generate import stop_ids
    from nashflow.generation.sampling import Sampler

    model, _, tok = peaked_models
    prompts = [encode_prompt(tok, list(m)) for m in PROMPTS.messages]
    k, n, stop = 2, 10, stop_ids(tok, model.generation_config)
    ours = sample_tokens(model, prompts, samples_per_prompt=k, max_new_tokens=n, stop_ids=stop,
                         pad_id=tok.pad_token_id, sampler=Sampler(temperature=0))
    width = max(map(len, prompts))
    rows = [p for p in prompts for _ in range(k)]
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    theirs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                            pad_token_id=tok.pad_token_id, eos_token_id=sorted(stop))[:, width:]
    assert ours.tolist() == theirs.tolist()
    assert len({tuple(r) for r in ours.tolist()}) == len(prompts)  # the prompts' continuations differ


def test_decoding_loop_samples_are_seeded_and_rows_independent(tiny_model):
    from nashflow.generation.decode import sample_tokens
    from nashflow.generation.generate import stop_ids
    from nashflow.generation.sampling import Sampler

    model, tok = tiny_model
    prompts = [encode_prompt(tok, list(m)) for m in PROMPTS.messages]
    kw = dict(samples_per_prompt=4, max_new_tokens=10, stop_ids=stop_ids(tok, model.generation_config),
              pad_id=tok.pad_token_id, sampler=Sampler(temperature=1.0, top_p=0.9))
    torch.manual_seed(5)
    a = sample_tokens(model, prompts, **kw)
    torch.manual_seed(5)
    b = sample_tokens(model, prompts, **kw)
    assert a.shape == (12, 10) and a.tolist() == b.tolist()
    assert len({tuple(r) for r in a.tolist()}) == 12  # every sample of every prompt is its own draw


def _encoded(tok):
    texts = ["happy day", "a much longer response with many words in it to score", "no"]
    return [encode_pair_side(tok, list(m), r, finished=i % 2 == 0, max_length=64, max_prompt_length=32)
            for i, (m, r) in enumerate(zip(PROMPTS.messages, texts))]


def test_encoding_masks_prompt_and_appends_eos(tiny_model):
    _, tok = tiny_model
    e = encode_pair_side(tok, list(PROMPTS.messages[0]), "happy day", finished=True, max_length=64,
                         max_prompt_length=32)
    prompt = encode_prompt(tok, list(PROMPTS.messages[0]))
    assert e.input_ids[: e.response_start] == prompt
    assert e.input_ids[-1] == tok.eos_token_id
    short = encode_pair_side(tok, list(PROMPTS.messages[1]), "word " * 50, finished=False, max_length=20,
                             max_prompt_length=8)
    assert len(short.input_ids) <= 20 and short.response_start == 8


def test_batched_logps_match_unbatched_full_forward(tiny_model):
    model, tok = tiny_model
    enc = _encoded(tok)
    sums, counts = sequence_logps(model, enc, tok.pad_token_id, max_tokens=64, progress=False)
    for e, s, n in zip(enc, sums, counts):
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        ref = logits[torch.arange(len(e.input_ids) - 1), ids[0, 1:]][e.response_start - 1:].sum().item()
        assert s == pytest.approx(ref, abs=1e-4)
        assert n == e.n_response


def test_length_batches_respect_budget():
    lengths = [5, 50, 7, 48, 20, 3]
    batches = length_batches(lengths, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1 for b in batches)


def _pairs_table(tmp_path, tok, model):
    """Six pairs plus log-prob tables for a reference and two history players (per-token too)."""
    rows = []
    for i in range(6):
        msgs = list(PROMPTS.messages[i % 3])
        rows.append({"pair_id": f"p{i}", "prompt_id": f"q{i}", "messages": msgs, "chosen": "happy good day " * (i + 1),
                     "rejected": "sad bad", "chosen_finish": "stop", "rejected_finish": "length",
                     "chosen_reward": 1.0, "rejected_reward": 0.0, "pref_prob": 0.7, "chosen_target": 0.7,
                     "rejected_target": 0.3, "generator": "base"})
    pairs = pd.DataFrame(rows)
    write_table(pairs, tmp_path / "pairs.parquet")
    enc = encode_pairs(tok, pairs, max_length=96, max_prompt_length=64)
    sums, counts, toks = sequence_logps(model, enc, tok.pad_token_id, progress=False, per_token=True)
    for name, shift in (("ref", 0.0), ("hist0", -0.5), ("hist1", 0.3)):
        write_table(pd.DataFrame({"pair_id": pairs.pair_id, "model": name, "chosen_logp": sums[:6] + shift,
                                  "chosen_tokens": counts[:6], "rejected_logp": sums[6:] - shift,
                                  "rejected_tokens": counts[6:], "chosen_token_logps": toks[:6]}),
                    tmp_path / f"{name}.parquet")
    return pairs


LOSS_SETTINGS = {
    "dpo": {}, "ipo": {}, "sppo": {"beta": 0.01}, "sppo_single": {"beta": 0.01}, "sppo_hard": {"beta": 0.01},
    "gpo": {"beta": 0.01}, "inpo": {"params": {"eta": 0.05, "ratio": 0.5}},
    "mnpo": {"logp_norm": "mean", "params": {"eta": 0.05, "ratio": 0.5}},
    "mnpo_dpo": {"logp_norm": "mean", "params": {"het_loss_weight": 0.1}},
    "nash_md": {}, "mle": {},
}


def _train(tmp_path, model_dir, loss_cfg, *, batch_size, history=2, epochs=1):
    train(policy_path=str(model_dir), pairs_path=str(tmp_path / "pairs.parquet"),
          logps={"reference": [str(tmp_path / "ref.parquet")],
                 "history": [[str(tmp_path / f"hist{j}.parquet")] for j in range(history)]},
          output_dir=str(tmp_path / "out"), metrics_path=str(tmp_path / "metrics.csv"),
          train_cfg=TrainConfig(learning_rate=1e-3, batch_size=batch_size, epochs=epochs, max_length=96,
                                max_prompt_length=64, warmup_ratio=0.0),
          loss_cfg=loss_cfg, progress=False)


@pytest.mark.parametrize("loss", sorted(LOSS_SETTINGS))
def test_one_step_of_every_loss_changes_every_parameter(tmp_path, tiny_model_dir, tiny_model, loss):
    model, tok = tiny_model
    _pairs_table(tmp_path, tok, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"beta": 0.1, **LOSS_SETTINGS[loss]}
    _train(tmp_path, tiny_model_dir, LossConfig(name=loss, **settings), batch_size=6,
           history=1 if loss == "inpo" else 2)
    from nashflow.models import load_model

    after = load_model(tmp_path / "out").state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters not updated by one {loss} step: {unchanged}"
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 1 and np.isfinite(metrics.loss).all()
    assert {"rewards_margin", "rewards_accuracy", "lr", "tokens_per_s", "kl_chosen"} <= set(metrics.columns)


def test_training_run_metrics_and_provenance(tmp_path, tiny_model_dir, tiny_model):
    model, tok = tiny_model
    _pairs_table(tmp_path, tok, model)
    _train(tmp_path, tiny_model_dir, LossConfig(name="dpo", beta=0.1), batch_size=2, history=0)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 3
    # At step 1 the policy equals the reference, so the DPO loss is log 2: the trainer and the
    # log-prob stage compute log-probs by the same code path.
    assert metrics.loss[0] == pytest.approx(np.log(2), abs=1e-4)
    prov = read_provenance(tmp_path / "out")
    assert prov["config"]["loss"]["name"] == "dpo" and prov["steps"] == 3
    assert not list((tmp_path / "out").glob("*.bin")) and (tmp_path / "out" / "model.safetensors").exists()


VAL_FRACTION = 0.34


def _preference_pairs(folder, tok, model, validation):
    """DPO pairs in ``folder``: four training pairs preferring "happy good day ..." to "sad bad" and
    the ``validation`` pairs [(messages, chosen, rejected)] under ids the trainer puts in its
    validation split; ``pairs.parquet`` holds all, ``train_pairs.parquet`` the training pairs alone,
    ``ref.parquet`` their log-probs under ``model`` (the initial policy: step 0's DPO loss is log 2)."""
    ids = [f"p{i}" for i in range(100)]
    train_ids = [p for p in ids if not is_validation(p, VAL_FRACTION)][:4]
    val_ids = [p for p in ids if is_validation(p, VAL_FRACTION)][: len(validation)]
    sides = [(PROMPTS.messages[i % 3], "happy good day " * (i % 3 + 1), "sad bad") for i in range(4)] + validation
    rows = [{"pair_id": pid, "prompt_id": f"q{i}", "messages": list(msgs), "chosen": chosen, "rejected": rejected,
             "chosen_finish": "stop", "rejected_finish": "stop", "chosen_reward": 1.0, "rejected_reward": 0.0,
             "pref_prob": 1.0, "chosen_target": 1.0, "rejected_target": 0.0, "generator": "base"}
            for i, (pid, (msgs, chosen, rejected)) in enumerate(zip(train_ids + val_ids, sides))]
    pairs = pd.DataFrame(rows)
    write_table(pairs, folder / "pairs.parquet")
    write_table(pairs[pairs.pair_id.isin(train_ids)], folder / "train_pairs.parquet")
    enc = encode_pairs(tok, pairs, max_length=96, max_prompt_length=64)
    sums, counts = sequence_logps(model, enc, tok.pad_token_id, progress=False)
    n = len(pairs)
    write_table(pd.DataFrame({"pair_id": pairs.pair_id, "model": "ref", "chosen_logp": sums[:n],
                              "chosen_tokens": counts[:n], "rejected_logp": sums[n:], "rejected_tokens": counts[n:]}),
                folder / "ref.parquet")


def _train_dpo(folder, model_dir, *, epochs, lr, select_best=True, pairs="pairs.parquet", out="out"):
    """DPO at a constant learning rate (a shorter run with the same seed is a prefix of a longer one,
    bit for bit on a CPU): the metrics, the provenance and the saved weights."""
    from safetensors.torch import load_file

    train(policy_path=str(model_dir), pairs_path=str(folder / pairs), logps={"reference": [str(folder / "ref.parquet")]},
          output_dir=str(folder / out), metrics_path=str(folder / f"{out}.csv"),
          train_cfg=TrainConfig(learning_rate=lr, lr_scheduler="constant", batch_size=2, epochs=epochs, max_length=96,
                                max_prompt_length=64, warmup_ratio=0.0, seed=0),
          loss_cfg=LossConfig(name="dpo", beta=0.1, select_best=select_best, val_fraction=VAL_FRACTION),
          progress=False)
    return (pd.read_csv(folder / f"{out}.csv"), read_provenance(folder / out),
            load_file(folder / out / "model.safetensors"))


def _same_weights(saved, other):
    """Whether two state dicts are equal, tensor by tensor, in the saved tensors' dtype."""
    assert saved.keys() == other.keys()
    return all(torch.equal(saved[k], other[k].to(saved[k].dtype)) for k in saved)


def _initial_weights(model_dir):
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_best_validation_checkpoint_is_kept(tmp_path, tiny_model_dir, tiny_model, monkeypatch):
    """With ``select_best`` the saved weights are the optimizer step's whose end-of-epoch
    validation loss was lowest, not the last step's."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the runs below are compared bit for bit
    model, tok = tiny_model
    # Validation: a copy of a training pair (its loss falls fast, then saturates) and a weak reversed
    # preference (its loss keeps rising): the validation loss falls, then rises.
    _preference_pairs(tmp_path, tok, model, [(PROMPTS.messages[1], "happy good day " * 2, "sad bad"),
                                             (PROMPTS.messages[2], "sad", "happy")])
    metrics, prov, saved = _train_dpo(tmp_path, tiny_model_dir, epochs=3, lr=1e-2)
    val = metrics.dropna(subset=["val_loss"])
    assert len(val) == 3 and prov["steps"] == int(metrics.step.iloc[-1])
    best = val.val_loss.idxmin()
    assert prov["best_val_loss"] == pytest.approx(val.val_loss[best], rel=1e-6)
    assert prov["best_step"] == int(val.step[best])
    assert 0 < prov["best_step"] < prov["steps"], f"the data should make a middle epoch best: {val.val_loss.tolist()}"
    assert prov["best_val_loss"] < np.log(2) - 0.05  # step 0 (policy = reference) is beaten clearly
    initial = _initial_weights(tiny_model_dir)
    assert all(not torch.equal(saved[k], initial[k].to(saved[k].dtype)) for k in saved), "initial policy saved"
    # The weights at the best step and at the last: the same seeded training without a validation
    # split, stopped after the best epoch and after the last (the same training losses, bit for bit).
    m_best, _, at_best = _train_dpo(tmp_path, tiny_model_dir, epochs=int(val.epoch[best]), lr=1e-2,
                                    select_best=False, pairs="train_pairs.parquet", out="to_best")
    m_last, _, at_last = _train_dpo(tmp_path, tiny_model_dir, epochs=3, lr=1e-2, select_best=False,
                                    pairs="train_pairs.parquet", out="to_last")
    assert m_best.loss.tolist() == metrics.loss[: len(m_best)].tolist() and int(m_best.step.iloc[-1]) == prov["best_step"]
    assert m_last.loss.tolist() == metrics.loss.tolist()
    assert _same_weights(saved, at_best), "the saved weights are not the best step's"
    assert not _same_weights(saved, at_last), "the saved weights are the last step's"


def test_initial_policy_is_kept_when_no_epoch_beats_step_0(tmp_path, tiny_model_dir, tiny_model, caplog):
    """With ``select_best``, when every epoch's validation loss is above step 0's, the saved weights
    are the initial policy's, exactly, with a warning."""
    model, tok = tiny_model
    # Validation: two training pairs with chosen and rejected swapped; learning the training
    # preference raises their loss.
    _preference_pairs(tmp_path, tok, model, [(PROMPTS.messages[1], "sad bad", "happy good day " * 2),
                                             (PROMPTS.messages[2], "sad bad", "happy good day " * 3)])
    with caplog.at_level(logging.WARNING, logger="nashflow"):
        metrics, prov, saved = _train_dpo(tmp_path, tiny_model_dir, epochs=2, lr=1e-3)
    val = metrics.dropna(subset=["val_loss"])
    assert len(val) == 2 and prov["steps"] == int(metrics.step.iloc[-1]) > 0
    assert prov["best_step"] == 0
    assert prov["best_val_loss"] == pytest.approx(np.log(2), abs=1e-4)  # step 0: the policy is the reference
    assert (val.val_loss > prov["best_val_loss"] + 0.05).all(), val.val_loss.tolist()  # so the weights moved
    initial = _initial_weights(tiny_model_dir)
    assert all(saved[k].dtype == torch.float32 for k in saved)  # the default checkpoint dtype
    assert _same_weights(saved, initial), "the saved weights are not the initial policy's"
    assert any(r.levelno == logging.WARNING and "no epoch improved the validation loss" in r.getMessage()
               for r in caplog.records)


def test_tables_are_atomic_and_carry_provenance(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    write_table(df, tmp_path / "t.parquet", {"parents": {"x": "y"}})
    assert read_provenance(tmp_path / "t.parquet")["parents"] == {"x": "y"}
    assert read_table(tmp_path / "t.parquet").a.tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_mixture_logprobs_worked_example():
    from nashflow.generation.decode import mixture_logprobs

    out = mixture_logprobs(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 0.5, 1.0]), 0.5).exp()
    assert out.tolist() == pytest.approx([0.419229, 0.326496, 0.254275], rel=1e-5)


@pytest.fixture(scope="module")
def peaked_models(tmp_path_factory):
    """Two tiny models with a large init range, so that greedy decoding does not collapse."""
    from conftest import build_tiny_model

    from nashflow.models import load_model, load_tokenizer

    a = build_tiny_model(tmp_path_factory.mktemp("peaked_a") / "model", seed=1, init_range=1.0)
    b = build_tiny_model(tmp_path_factory.mktemp("peaked_b") / "model", seed=2, init_range=1.0)
    return load_model(a), load_model(b), load_tokenizer(a)


def test_mixture_sampler_with_kv_caches_matches_each_end(peaked_models):
    """Greedy mixture decoding with α = 0 is the policy's greedy output, with α = 1 the reference's
    (left padding, positions and both KV caches are handled like HF generate)."""
    model, ref, tok = peaked_models
    cfg = SamplingConfig(samples_per_prompt=1, max_new_tokens=8, temperature=0, batch_size=3)
    policy_greedy = generate_samples(model, tok, PROMPTS, cfg, seed=0, generator="p", progress=False)
    ref_greedy = generate_samples(ref, tok, PROMPTS, cfg, seed=0, generator="r", progress=False)
    for alpha, want in ((0.0, policy_greedy), (1.0, ref_greedy)):
        got = generate_samples(model, tok, PROMPTS, cfg, seed=0, generator="m", progress=False, mixture_ref=ref,
                               mixture_coef=alpha, sample_offset=1)
        assert got.response.tolist() == want.response.tolist()
        assert set(got.sampler) == {"mixture"} and set(got.sample_index) == {1}
    assert policy_greedy.response.tolist() != ref_greedy.response.tolist()
    assert all(len(r) > 0 for r in policy_greedy.response)
    sampled = generate_samples(model, tok, PROMPTS, SamplingConfig(samples_per_prompt=1, max_new_tokens=8,
                                                                   temperature=0.9, top_k=20, top_p=0.9),
                               seed=3, generator="m", progress=False, mixture_ref=ref, mixture_coef=0.5)
    assert len(sampled) == 3 and (sampled.token_count <= 8).all()
