"""A checkpoint's chat template: messages -> prompt text, as Hugging Face's apply_chat_template.

The template is Jinja (`chat_template` in tokenizer_config.json, or a
chat_template.jinja file beside it), rendered in Jinja's immutable sandbox with
the special tokens the config names and `add_generation_prompt=True`, so the
prompt ends where the assistant's reply begins. The text then encodes without
the tokenizer's own special tokens: the template has placed them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ShardspecError
from ..files import MAX_CONFIG_BYTES, read_json_object, read_text


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)
        self._special = special_tokens

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt text of `messages`, with `tools` (OpenAI's tool definitions) where offered."""
        extra = {"tools": tools} if tools else {}
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._special, **extra)
        except ShardspecError:
            raise
        except Exception as e:  # a template error is about these messages
            raise ShardspecError(f"the chat template cannot render these messages: {e}", path="messages") from None


def load_chat_template(checkpoint: str | None) -> ChatTemplate | None:
    """The checkpoint's chat template; None when it has none."""
    if checkpoint is None:
        return None
    root = Path(checkpoint)
    config = {}
    if os.path.lexists(root / "tokenizer_config.json"):
        config = read_json_object(root / "tokenizer_config.json", MAX_CONFIG_BYTES)
    source = config.get("chat_template")
    if os.path.lexists(root / "chat_template.jinja"):
        source = read_text(root / "chat_template.jinja", MAX_CONFIG_BYTES)
    if not isinstance(source, str):
        return None
    special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return ChatTemplate(source, {k: v for k, v in special.items() if v is not None})


def _token_text(token) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _raise(message: str):
    raise ShardspecError(f"the chat template refused these messages: {message}", path="messages")
