"""Nash-MD's geometric-mixture sampler.

At every decoding step the next-token distribution is

    π_mix(· | x, y_<t) ∝ π_ref(·)^α · π_θ(·)^(1−α),  i.e.  log_softmax(α·z_ref + (1−α)·z_θ),

with temperature, top-k and top-p applied on top (TRL's GeometricMixtureWrapper). Unlike TRL,
both models keep their KV caches, so the cost is linear in the response length.
"""

from __future__ import annotations

import torch

from nashflow.torchutil import inference_mode


def mixture_logprobs(policy_logits: torch.Tensor, ref_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """log π_mix = log_softmax(α·z_ref + (1−α)·z_θ) over the last dimension."""
    return torch.log_softmax(alpha * ref_logits.float() + (1.0 - alpha) * policy_logits.float(), dim=-1)


def _filter(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@inference_mode
def generate_mixture(policy, ref, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, alpha: float,
                     max_new_tokens: int, temperature: float, top_p: float, top_k: int, stop_ids: set[int],
                     pad_id: int) -> torch.Tensor:
    """Sample continuations of left-padded prompts from the geometric mixture; returns new tokens [B, N]."""
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out_p = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True)
    out_r = ref(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True)
    cache_p, cache_r = out_p.past_key_values, out_r.past_key_values
    z_p, z_r = out_p.logits[:, -1], out_r.logits[:, -1]
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    stop = torch.tensor(sorted(stop_ids), device=input_ids.device)
    new_tokens = []
    for _ in range(max_new_tokens):
        logp = mixture_logprobs(z_p, z_r, alpha)
        if temperature > 0:
            probs = _filter(logp, temperature, top_k, top_p).softmax(-1)
            tok = torch.multinomial(probs, 1).squeeze(-1)
        else:
            tok = logp.argmax(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new_tokens.append(tok)
        done = done | torch.isin(tok, stop)
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=-1)
        step_in = tok.unsqueeze(-1)
        out_p = policy(input_ids=step_in, attention_mask=attention_mask, position_ids=next_pos,
                       past_key_values=cache_p, use_cache=True)
        out_r = ref(input_ids=step_in, attention_mask=attention_mask, position_ids=next_pos,
                    past_key_values=cache_r, use_cache=True)
        cache_p, cache_r = out_p.past_key_values, out_r.past_key_values
        z_p, z_r = out_p.logits[:, -1], out_r.logits[:, -1]
        next_pos = next_pos + 1
    return torch.stack(new_tokens, dim=1)
