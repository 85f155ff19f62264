"""Packed log-probs (shared prompts, rows without padding) equal the plain computation: one
unpadded forward per sequence with the full vocabulary log-softmax (the correctness guard for the
log-prob stage's and the trainer's speed-ups)."""

import types

import numpy as np
import pandas as pd
import pytest
import torch

from nashflow.batching import build_packed, pack_rows, prompt_groups, split_groups
from nashflow.logps import can_pack, encode_pair_side, packing_mode, sequence_logps
from nashflow.settings import LossConfig, TrainConfig
from nashflow.training import PairBatches

PROMPTS = ["Write a happy note", "What is the weather like today in a small town? Tell me in detail please", "Hi"]
RESPONSES = ["happy day", "a much longer response with many words in it to score and more words", "no",
             "sad", "I love this wonderful happy day, thank you so much!", "This is terrible, sad and awful."]


def _encoded(tok, max_length=64, max_prompt_length=32):
    """Three prompts x three responses of different lengths, finished or not; with a small
    max_length some prompts are cut, so the same prompt can come out with different tokens."""
    out = []
    for p, prompt in enumerate(PROMPTS):
        for k in range(3):
            text = RESPONSES[(p + 2 * k) % len(RESPONSES)] * (1 + k)
            out.append(encode_pair_side(tok, [{"role": "user", "content": prompt}], text, finished=k != 1,
                                        max_length=max_length, max_prompt_length=max_prompt_length))
    return out


def _plain_token_logps(model, e) -> np.ndarray:
    ids = torch.tensor([e.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return logits[torch.arange(len(e.input_ids) - 1), ids[0, 1:]][e.response_start - 1:].numpy()


@pytest.mark.parametrize("max_tokens", [48, 4096])
@pytest.mark.parametrize("max_length", [64, 20])
def test_packed_logps_equal_one_plain_forward_per_sequence(tiny_model, max_tokens, max_length):
    model, tok = tiny_model
    assert can_pack(model)
    enc = _encoded(tok, max_length=max_length, max_prompt_length=max_length // 2)
    sums, counts, toks = sequence_logps(model, enc, tok.pad_token_id, max_tokens=max_tokens, progress=False,
                                        per_token=True, packing=True)
    for e, s, n, t in zip(enc, sums, counts, toks):
        ref = _plain_token_logps(model, e)
        assert n == e.n_response == len(t)
        np.testing.assert_allclose(t, ref, atol=1e-4, rtol=0)
        assert s == pytest.approx(ref.sum(), abs=1e-4 * max(1, n))
    padded = sequence_logps(model, enc, tok.pad_token_id, max_tokens=max_tokens, progress=False, packing=False)[0]
    np.testing.assert_allclose(sums, padded, atol=1e-4)


def test_packing_shares_prompts_and_leaves_no_padding_between_groups(tiny_model):
    _, tok = tiny_model
    enc = _encoded(tok)
    groups = prompt_groups(enc)
    assert sorted(i for g in groups for i in g) == list(range(len(enc)))
    prompt = lambda i: tuple(enc[i].input_ids[: enc[i].response_start])  # noqa: E731
    assert all(len({prompt(i) for i in g}) == 1 for g in groups)  # members share the prompt tokens exactly
    assert len({prompt(g[0]) for g in groups}) == len(groups)  # one group per distinct prompt
    assert len(groups) < len(enc) and max(len(g) for g in groups) == 3  # K responses of one prompt share it
    pairs = prompt_groups(enc, [[0, 1], [2], [6, 7, 8]])  # sharing only within each candidate group
    assert sorted(map(sorted, pairs)) == [[0, 1], [2], [6, 7, 8]]
    width = max(len(e.input_ids) for e in enc) + 10
    cut = split_groups(enc, groups, width)
    rows = pack_rows(enc, cut, width)
    assert sorted(i for row in rows for g in row for i in g) == list(range(len(enc)))
    for row in rows:
        used = sum(enc[g[0]].response_start + sum(enc[i].n_response for i in g) for g in row)
        assert used <= width
    batch = build_packed(enc, rows, tok.pad_token_id)
    real = sum(len(e.input_ids) for e in enc)
    shared = sum(enc[g[0]].response_start * (len(g) - 1) for g in cut)
    assert batch.tokens == real - shared  # each group's prompt computed once
    assert len(batch.src) == sum(e.n_response for e in enc)


def test_packed_mask_keeps_groups_and_branches_apart(tiny_model):
    _, tok = tiny_model
    enc = _encoded(tok)[:6]
    rows = [[[0, 1], [3]]]  # one row: prompt A | resp 0 | resp 1 , prompt B | resp 3
    b = build_packed(enc, rows, tok.pad_token_id)
    m = b.attention_mask[0, 0]
    p0, n0, n1 = enc[0].response_start, enc[0].n_response, enc[1].n_response
    r1 = p0 + n0  # first token of response 1
    g2 = r1 + n1  # first token of the second group
    assert m[r1, :p0].all() and not m[r1, p0:r1].any() and m[r1, r1]  # resp 1 sees the prompt, not resp 0
    assert not m[g2, :g2].any()  # the second group sees nothing of the first
    assert b.position_ids[0, r1].item() == p0  # resp 1 starts where it would alone
    assert b.position_ids[0, g2].item() == 0
    assert (~m.triu(1)).all()  # causal


@pytest.mark.parametrize("attn,layout", [("eager", "tree"), ("sdpa", "flat"), ("eager", "flat")])
def test_every_layout_and_attention_equals_one_plain_forward_per_sequence(tiny_model_dir, attn, layout):
    """flat rows (flash-attention's layout: sequences separated by position ids restarting at 0, no
    mask) and tree rows, under sdpa and eager, against one unpacked sdpa forward per sequence; with a
    small token budget so that rows hold several sequences and batches several rows."""
    from nashflow.models import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    plain = load_model(tiny_model_dir)
    model = load_model(tiny_model_dir, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    enc = _encoded(tok)
    for max_tokens in (64, 4096):
        sums, _, toks = sequence_logps(model, enc, tok.pad_token_id, max_tokens=max_tokens, progress=False,
                                       per_token=True, packing=layout)
        for e, s, t in zip(enc, sums, toks):
            ref = _plain_token_logps(plain, e)
            np.testing.assert_allclose(t, ref, atol=1e-4, rtol=0)
            assert s == pytest.approx(ref.sum(), abs=1e-4 * max(1, e.n_response))


def test_flat_rows_have_no_mask_and_restart_positions(tiny_model):
    _, tok = tiny_model
    enc = _encoded(tok)[:3]
    b = build_packed(enc, [[[0], [1], [2]]], tok.pad_token_id, flat=True)
    assert b.attention_mask is None
    starts = [0, len(enc[0].input_ids), len(enc[0].input_ids) + len(enc[1].input_ids)]
    assert [b.position_ids[0, s].item() for s in starts] == [0, 0, 0]
    assert b.position_ids[0, starts[1] - 1].item() == len(enc[0].input_ids) - 1


def test_packing_mode_follows_the_attention_implementation():
    model = lambda impl: types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation=impl),  # noqa: E731
                                               get_output_embeddings=lambda: None)
    assert packing_mode(model("sdpa")) == packing_mode(model("eager")) == "tree"
    assert packing_mode(model("flash_attention_2")) == "flat"
    assert packing_mode(model("flex_attention")) is None  # padded batches
    assert not can_pack(torch.nn.Linear(2, 2))  # not a causal LM: padded path


@pytest.mark.parametrize("loss,layout", [("dpo", "tree"), ("mle", "tree"), ("dpo", "flat")])
def test_trainer_packed_loss_and_gradients_equal_padded(tiny_model_dir, monkeypatch, loss, layout):
    from nashflow.losses import get_loss
    from nashflow.models import load_model, load_tokenizer
    from nashflow.training import batches as T

    tok = load_tokenizer(tiny_model_dir)
    rows = [{"pair_id": f"p{i}", "messages": [{"role": "user", "content": PROMPTS[i % 3]}],
             "chosen": RESPONSES[i] * (i + 1), "rejected": RESPONSES[(i + 3) % 6], "chosen_finish": "stop",
             "rejected_finish": "length", "chosen_target": 0.7, "rejected_target": 0.3, "pref_prob": 0.7,
             "ref_chosen_logp": -30.0 - i, "ref_chosen_tokens": 10, "ref_rejected_logp": -20.0, "ref_rejected_tokens": 5}
            for i in range(5)]
    data = PairBatches(pd.DataFrame(rows), tok, TrainConfig(max_length=48, max_prompt_length=24),
                       LossConfig(name=loss, beta=0.1), n_history=0)
    results = []
    for mode in (layout, None):
        monkeypatch.setattr(T, "packing_mode", lambda m, mode=mode: mode)
        model = load_model(tiny_model_dir, eval_mode=False)
        losses, kw, n_tok = data.loss(model, [0, 1, 2, 3, 4], get_loss(loss), "cpu")
        losses.mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((losses.detach(), kw["policy_chosen_logps"].detach(), grads, n_tok))
    (l1, c1, g1, n1), (l2, c2, g2, n2) = results
    torch.testing.assert_close(c1, c2, atol=1e-4, rtol=0)
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)
    assert n1 == n2  # tokens/s counts the pairs' tokens either way


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
def test_nucleus_filter_keeps_what_transformers_top_p_keeps(top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from nashflow.generation.sampling import NucleusFilter

    g = torch.Generator().manual_seed(0)
    # peaked and flat rows; k starts small so the widening path runs too
    logits = torch.randn(64, 3000, generator=g) * torch.linspace(0.1, 8, 64)[:, None]
    for temperature, top_k in ((1.0, 0), (0.7, 0), (0.8, 50)):
        ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            ref = TopKLogitsWarper(top_k)(None, ref)
        pre = ref.clone()
        ref = TopPLogitsWarper(top_p)(None, ref)
        ours = NucleusFilter(temperature=temperature, top_k=top_k, top_p=top_p, k=8)(None, logits.clone())
        differ = torch.isinf(ours) != torch.isinf(ref)
        for r, c in differ.nonzero().tolist():  # only float rounding at the nucleus boundary may differ
            probs = pre[r].softmax(-1)
            assert abs(float(probs[probs > probs[c]].sum()) - top_p) < 1e-5
        assert differ.sum() <= 8
        kept = ~torch.isinf(ours) & ~torch.isinf(ref)
        torch.testing.assert_close(ours[kept], ref[kept])


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 0.8), (1.3, 5, 1.0), (0.8, 6, 0.9)])
def test_sampler_draws_from_the_filtered_softmax(temperature, top_k, top_p):
    """The inverse-CDF draw (one uniform per row) has the distribution softmax(filtered scores):
    frequencies over 40,000 draws per row within 5 standard errors, nothing outside the filter."""
    from nashflow.generation.sampling import NucleusFilter, Sampler

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 12, generator=g) * torch.tensor([[0.5], [2.0], [4.0]])
    want = NucleusFilter(temperature=temperature, top_k=top_k, top_p=top_p, k=2)(None, logits).softmax(-1)
    draws = 40_000
    torch.manual_seed(0)
    tokens = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, k=2)(logits.repeat_interleave(draws, 0))
    freq = torch.zeros(3, 12).scatter_add_(1, tokens.view(3, draws), torch.ones(3, draws)) / draws
    assert (freq[want == 0] == 0).all()
    se = (want * (1 - want) / draws).sqrt()
    assert ((freq - want).abs() <= 5 * se + 1e-9).all(), (freq, want)
    assert Sampler(temperature=0)(logits).tolist() == logits.argmax(-1).tolist()


def test_log_probs_through_a_ddp_wrapper_equal_the_bare_model(tiny_model, tmp_path):
    """The trainer's forward goes through the wrapper (real DDP here, one gloo process): packed and
    padded log-probs and their gradients equal the bare model's."""
    import gc

    import torch.distributed as dist

    from nashflow.batching import collate, packed_batches
    from nashflow.logps import packed_logps, token_logps

    model, tok = tiny_model
    enc = _encoded(tok)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ddp = None
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert can_pack(ddp)
        (rows,) = packed_batches(enc, prompt_groups(enc), max_tokens=1 << 20)
        batch = build_packed(enc, rows, tok.pad_token_id)
        ids, attn, resp = collate(enc, tok.pad_token_id)
        got = []
        for m in (model, ddp):
            model.zero_grad()
            sums, _ = packed_logps(m, batch)
            per_token = token_logps(m, ids, attn, resp)
            (sums.sum() + per_token.sum()).backward()
            got.append((sums.detach(), per_token.detach(), model.lm_head.weight.grad.clone()))
        for a, b in zip(*got):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[0][0].sum(), got[0][1].sum(), atol=1e-3, rtol=0)  # packed = padded
    finally:
        # DDP's reducer before the group: freed after it, the reducer would destroy the gloo group
        # while holding the GIL that the group's worker thread needs to exit (a deadlock)
        del ddp
        gc.collect()
        dist.destroy_process_group()
