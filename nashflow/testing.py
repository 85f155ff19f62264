"""Tiny random models and tokenizers built on the spot (no download), for tests and benchmarks:
a Llama policy with a BPE tokenizer and a ChatML template, and tiny reward, judge and GPM models."""

from __future__ import annotations

import json
from pathlib import Path

#: the embedded default prompts; the tiny tokenizer's BPE is trained on them
PROMPTS = Path(__file__).resolve().parents[1] / "resources" / "prompts" / "default.jsonl"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    texts += ["I love this wonderful happy day, thank you so much!", "This is terrible, sad and awful."] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def build_tiny_model(out: Path, seed: int = 0, init_range: float = 0.02) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=init_range)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


# A chat format unlike the policy's ChatML, so tests can tell which template a scorer applied.
BRACKETS = (
    "{% for message in messages %}{{'[' + message['role'] | upper + '] ' + message['content'] + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[ASSISTANT] ' }}{% endif %}"
)


def _tiny_llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       **kw)


def build_tiny_reward_model(out: Path, seed: int = 1, num_labels: int = 1, template: str | None = BRACKETS) -> Path:
    """A tiny random sequence classifier whose tokenizer has its own chat template (or none)."""
    import torch
    from transformers import LlamaForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out)
    tok.chat_template = template
    tok.save_pretrained(out)
    if template is None:  # save_pretrained keeps an old chat_template.jinja otherwise
        for f in out.glob("chat_template*"):
            f.unlink()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_tiny_llama_config(tok, num_labels=num_labels, initializer_range=0.5))
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_judge(out: Path, seed: int = 2) -> Path:
    """A tiny random causal LM judge with the bracket chat template."""
    build_tiny_model(out, seed=seed, init_range=0.5)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = BRACKETS
    tok.save_pretrained(out)
    return out


def build_tiny_gpm(out: Path, seed: int = 3, k: int = 2, prompt_head: bool = True) -> Path:
    """A tiny general preference model: Llama backbone + value head [2k, H] (+ prompt head [k, H])."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaModel

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out)
    tok.chat_template = BRACKETS
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    model = LlamaModel(_tiny_llama_config(tok, initializer_range=0.5))
    model.save_pretrained(out, safe_serialization=True)
    heads = {"value_head.weight": torch.randn(2 * k, 32)}
    if prompt_head:
        heads["prompt_head.weight"] = torch.randn(k, 32)
    save_file(heads, str(out / "gpm_head.safetensors"))
    return out
