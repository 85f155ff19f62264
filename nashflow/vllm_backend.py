"""vLLM generation backend (optional extra ``nashflow[gpu]``; imported only when selected).

Same samples table as the transformers backend (see docs/data-contracts.md): one request per
sample with its own seed ``derive_seed(seed, prompt_id, k)``, so a sample does not depend on what
else is in the batch; tensor parallelism over the job's GPUs. The prompt is the same chat-templated,
left-truncated token sequence as in :func:`nashflow.generate.generate_samples`.
"""

from __future__ import annotations

import logging

import pandas as pd

from nashflow.errors import NashflowError
from nashflow.generate import SamplingConfig, encode_prompt
from nashflow.seeding import derive_seed

log = logging.getLogger(__name__)


def load_vllm():
    try:
        import vllm
    except ImportError as err:
        raise NashflowError("generation.backend is vllm but the vllm package is missing: install the GPU extra "
                            "(pip install 'nashflow[gpu]') on a machine with CUDA, or use backend: transformers") from err
    return vllm


def generate_vllm(model_dir: str, tokenizer, prompts: pd.DataFrame, cfg: SamplingConfig, *, seed: int,
                  generator: str, tensor_parallel: int = 1, engine_args: dict | None = None) -> pd.DataFrame:
    vllm = load_vllm()
    llm = vllm.LLM(model=str(model_dir), tensor_parallel_size=max(1, int(tensor_parallel)), seed=seed,
                   **(engine_args or {}))
    stop_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    requests, params, keys = [], [], []
    for pid, msgs in zip(prompts["prompt_id"], prompts["messages"]):
        ids = encode_prompt(tokenizer, list(msgs))[-cfg.max_prompt_length:]
        for k in range(cfg.samples_per_prompt):
            s = derive_seed(seed, str(pid), k)
            requests.append({"prompt_token_ids": ids})
            params.append(vllm.SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                                              top_k=cfg.top_k if cfg.top_k > 0 else -1, max_tokens=cfg.max_new_tokens,
                                              seed=s, skip_special_tokens=True))
            keys.append((pid, list(msgs), k, len(ids), s))
    outs = llm.generate(requests, sampling_params=params, use_tqdm=True) if requests else []
    rows = []
    for (pid, msgs, k, n_prompt, s), out in zip(keys, outs):
        o = out.outputs[0]
        toks = list(o.token_ids)
        finish = "stop" if o.finish_reason == "stop" else "length"
        if finish == "stop" and toks and toks[-1] in stop_ids:
            toks = toks[:-1]
        rows.append({"prompt_id": pid, "messages": msgs, "sample_index": k, "response": o.text.strip(),
                     "token_count": len(toks), "prompt_tokens": n_prompt, "finish_reason": finish, "seed": s,
                     "generator": generator, "sampler": "policy"})
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["prompt_id", "sample_index"]).reset_index(drop=True)
    return df
