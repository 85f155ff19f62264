"""Chat messages: the conversations that prompts, samples and pairs carry.

A conversation is a list of ``{"role", "content"}`` dicts with roles ``system``, ``user`` and
``assistant``. Datasets hold them as lists of dicts (JSONL), as Arrow lists of structs (Parquet,
Hugging Face datasets; pandas shows them as NumPy arrays of dicts) or not at all (plain text);
:func:`conversation` turns any of these into plain dicts and checks them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from nashflow.errors import DataError

ROLES = ("system", "user", "assistant")


def to_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A one-turn conversation: the optional system message, then ``prompt`` as the user turn."""
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def last_user_text(messages: list[dict]) -> str:
    """The content of the last user turn ('' if there is none)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def is_conversation(value: Any) -> bool:
    """Whether a cell holds a message list (rather than text)."""
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(m, dict) for m in value)


def conversation(value: Any, where: str) -> list[dict[str, str]]:
    """``value`` as a list of plain ``{"role", "content"}`` dicts; DataError naming ``where`` if it is not one."""
    if not is_conversation(value) or len(value) == 0:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise DataError(f"{where}: message {i + 1} needs a role ({', '.join(ROLES)}) and text content; "
                            f"got role {role!r} and {type(content).__name__} content")
        out.append({"role": role, "content": content})
    return out


def prompt_conversation(value: Any, where: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A prompt cell (text, or a conversation ending with a user turn) as the conversation sent to the
    chat template. ``system_prompt`` is added only to a conversation without a system turn."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty")
        return to_messages(value.strip(), system_prompt)
    if not is_conversation(value):
        raise DataError(f"{where}: the prompt is neither text nor a list of messages ({type(value).__name__})")
    msgs = conversation(value, where)
    if msgs[-1]["role"] != "user":
        raise DataError(f"{where}: the conversation ends with a{'n' if msgs[-1]['role'] == 'assistant' else ''} "
                        f"{msgs[-1]['role']} turn; a prompt must end with a user turn")
    if not msgs[-1]["content"].strip():
        raise DataError(f"{where}: the last user turn is empty")
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def response_text(value: Any, where: str) -> str:
    """A response cell as text: the text itself, or the final assistant turn of a conversation."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    msgs = conversation(value, where)
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the response conversation ends with a {msgs[-1]['role']} turn, "
                        "not an assistant turn")
    return msgs[-1]["content"]


def prompt_id_for(text: str) -> str:
    """The id of a prompt without an id column: ``h`` + 12 hex digits of the SHA-1 of its text."""
    return "h" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def conversation_id(msgs: list[dict[str, str]], system_prompt: str | None = None) -> str:
    """The id of a prompt conversation: that of its text for a single user turn (so a prompt has the
    same id as text or as a one-turn list), else the hash of the whole conversation. A system turn
    that only ``system_prompt`` added does not count."""
    if system_prompt and msgs and msgs[0] == {"role": "system", "content": system_prompt}:
        msgs = msgs[1:]
    if len(msgs) == 1:
        return prompt_id_for(msgs[0]["content"])
    return prompt_id_for(json.dumps([[m["role"], m["content"]] for m in msgs], ensure_ascii=False))
