"""OpenAI's request and response shapes for /v1/completions and /v1/chat/completions.

Requests are pydantic models that forbid unknown fields, so a misspelt field
is a 400 naming it, as every other bad value is. Sampling fields map onto the
engine's request fields (vLLM's names: `top_k` and `ignore_eos` are
extensions OpenAI's API does not have). Responses follow OpenAI's JSON; each
choice also carries `token_ids`, the generated ids, which a model without a
tokenizer can return in no other way.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=100, allow_inf_nan=False)  # OpenAI's default
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=-1, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice a prompt
    user: str | None = None

    def engine_fields(self, max_tokens_default: int | None) -> dict:
        fields = {
            "max_tokens": self.max_tokens or max_tokens_default,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "ignore_eos": self.ignore_eos,
        }
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.stop:
            fields["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.stop_token_ids:
            fields["stop_token_ids"] = self.stop_token_ids
        if self.top_logprobs_wanted is not None:
            fields["logprobs"] = self.top_logprobs_wanted
        return fields

    @property
    def top_logprobs_wanted(self) -> int | None:
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: Literal[False] = False

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[dict]:
        """Each prompt as engine fields: `prompt` text or `prompt_token_ids`."""
        p = self.prompt
        if isinstance(p, str):
            return [{"prompt": p}]
        if p and all(isinstance(x, int) for x in p):
            return [{"prompt_token_ids": p}]
        return [{"prompt": x} if isinstance(x, str) else {"prompt_token_ids": x} for x in p]


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def engine_fields(self, max_tokens_default: int | None) -> dict:
        fields = super().engine_fields(max_tokens_default)
        if self.max_completion_tokens is not None:
            fields["max_tokens"] = self.max_completion_tokens
        return fields


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(rid: str, kind: str, model: str, choices: list[dict], **extra) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def completion_choice(index: int, text: str, token_ids, finish_reason, logprobs=None) -> dict:
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "token_ids": list(token_ids),
    }


def chat_choice(index: int, text: str, token_ids, finish_reason, *, delta: bool, first=False, logprobs=None) -> dict:
    if delta:
        message = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        key = "delta"
    else:
        message, key = {"role": "assistant", "content": text}, "message"
    return {
        "index": index,
        key: message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "token_ids": list(token_ids),
    }


def completion_logprobs(entries, token_text, offset: int = 0) -> dict:
    """OpenAI's completions `logprobs`: tokens, their logprobs, the top ones, text offsets."""
    tokens = [token_text(e.token_id) for e in entries]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{token_text(i): lp for i, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries, token_text) -> dict:
    """OpenAI's chat `logprobs`: one entry a token, each with its top alternatives."""

    def one(token_id: int, logprob: float) -> dict:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [one(e.token_id, e.logprob) | {"top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]
    }
