"""OpenAI's request and response shapes for /v1/completions and /v1/chat/completions.

Requests are pydantic models: every field shardspec knows is strictly typed (a
wrong type or range is a 400 naming it). Fields it does not know are kept
(`model_extra`): the server ignores them and lists them in a response header,
as vLLM accepts what OpenAI's clients send; `shardspec serve --strict-fields`
refuses them instead. A field it knows but cannot serve as asked (`suffix`,
`best_of` fewer than `n`, two ways of structuring one output) is a 400
(`not_yet_supported`): a request is never answered as if it had asked for
something else. `response_format` and vLLM's `structured_outputs` become the
engine's structured outputs; chat `tools` are `tool_calls.py`'s. `n` samples
a prompt (`best_of` drawn, the `n` most likely kept) are that many engine
requests (`samples`). Sampling fields map onto the
engine's request fields (vLLM's names: `top_k`, `min_tokens`,
`repetition_penalty`, `prompt_logprobs` and `ignore_eos` are extensions
OpenAI's API does not have). Responses follow OpenAI's JSON; each choice also
carries `token_ids`, the generated ids, which a model without a tokenizer can
return in no other way, and, where asked, vLLM's `prompt_logprobs`.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Fields(BaseModel):
    """Known fields typed; unknown ones kept in `model_extra` (see `unknown_fields`)."""

    model_config = ConfigDict(extra="allow")


class ResponseFormat(_Fields):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict | None = None  # {"name", "schema", "strict"}

    def structured_outputs(self) -> dict | None:
        """The engine's `structured_outputs` for it (None: text). FieldProblem without a schema."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            schema = (self.json_schema or {}).get("schema")
            if not isinstance(schema, dict):
                raise FieldProblem("response_format.json_schema.schema", "response_format: json_schema needs a schema")
            return {"json": schema}
        return None


class _Sampling(_Fields):
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
    n: int = Field(default=1, ge=1, le=128)
    # None (left out, or null as some clients send): the engine's default, no adjustment
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    min_tokens: int | None = Field(default=None, ge=0)
    logit_bias: dict[str, float] | None = None
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    structured_outputs: dict | None = None  # vLLM's: {"json" | "json_object" | "regex" | "choice" | "grammar": ...}
    user: str | None = None

    @property
    def drawn(self) -> int:
        """Samples drawn a prompt (`n`; completions' `best_of` draws more and keeps `n`)."""
        return self.n

    def samples(self, prompts: list[dict]) -> list[dict]:
        """Each prompt `drawn` times, engine request i × drawn + j its sample j: sample j draws
        with seed + j (sample 0 as a request without `n`), so the samples differ and each is
        reproducible. With prefix caching on, they share the prompt's full pages as equal prefixes do."""
        base = self.seed or 0
        return [p | ({"seed": (base + j) % 2**32} if j else {}) for p in prompts for j in range(self.drawn)]

    def not_yet_supported(self) -> tuple[str, str] | None:
        """(field, message) for the first field asking for what shardspec cannot serve as asked."""
        if self.structured_outputs is not None and self.response_format not in (None, ResponseFormat(type="text")):
            return "structured_outputs", "give response_format or structured_outputs, not both"
        return None

    def structured(self) -> dict | None:
        """The engine's `structured_outputs` (FieldProblem for a response_format without a schema)."""
        if self.structured_outputs is not None:
            return self.structured_outputs
        return self.response_format.structured_outputs() if self.response_format is not None else None

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
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "prompt_logprobs"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.logit_bias:
            fields["logit_bias"] = self.logit_bias
        if (structured := self.structured()) is not None:
            fields["structured_outputs"] = structured
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
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=128)
    suffix: str | None = None

    def not_yet_supported(self) -> tuple[str, str] | None:
        if self.best_of is not None and self.best_of < self.n:
            return "best_of", f"best_of {self.best_of} is less than n {self.n}: it draws the n choices from best_of"
        if self.drawn > self.n and self.stream:
            return "best_of", "best_of more than n cannot stream (the best are known once all have finished)"
        if self.echo and self.stream and self.logprobs is not None:
            return "echo", "echo with logprobs is not supported when streaming yet (leave out stream or logprobs)"
        if self.suffix:
            return "suffix", "suffix is not supported yet (only empty)"
        return super().not_yet_supported()

    @property
    def drawn(self) -> int:
        return max(self.best_of or 1, self.n)

    @property
    def top_logprobs_wanted(self) -> int | None:
        if self.drawn > self.n and self.logprobs is None:
            return 0  # the choices are ranked by their tokens' logprobs (not shown)
        return self.logprobs

    def engine_fields(self, max_tokens_default: int | None) -> dict:
        fields = super().engine_fields(max_tokens_default)
        if self.echo and self.logprobs is not None:  # the prompt's tokens' logprobs, shown before the output's
            fields["prompt_logprobs"] = max(self.logprobs, self.prompt_logprobs or 0)
        return fields

    def prompts(self) -> list[dict]:
        """Each prompt as engine fields: `prompt` text or `prompt_token_ids`."""
        p = self.prompt
        if isinstance(p, str):
            return [{"prompt": p}]
        if p and all(isinstance(x, int) for x in p):
            return [{"prompt_token_ids": p}]
        return [{"prompt": x} if isinstance(x, str) else {"prompt_token_ids": x} for x in p]


class FieldProblem(ValueError):
    """A request field shardspec cannot serve as given; `param` names it (a 400)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param, self.message = param, message


class ContentPart(_Fields):
    type: str
    text: str | None = None


class Message(_Fields):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None  # None: an assistant turn that only calls tools
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None

    def template_fields(self, index: int) -> dict:
        """The message as a chat template reads it: content parts joined into one text."""
        fields = self.model_dump(exclude_none=True, include={"role", "name", "tool_calls", "tool_call_id"})
        if self.content is None and not self.tool_calls:
            where = f"messages.{index}.content"
            raise FieldProblem(where, f"{where}: required (null only beside tool_calls)")
        if isinstance(self.content, list):
            for j, part in enumerate(self.content):
                if part.type != "text" or part.text is None:
                    where = f"messages.{index}.content.{j}"
                    message = f"{where}: a {part.type!r} part is not supported (text parts only)"
                    raise FieldProblem(f"{where}.type", message)
        texts = [p.text for p in self.content] if isinstance(self.content, list) else [self.content or ""]
        if self.tool_calls:  # templates read a call's arguments as an object (`| tojson`), as vLLM gives them
            fields["tool_calls"] = [_arguments_parsed(call) for call in self.tool_calls]
        return fields | {"content": "".join(texts)}


def _arguments_parsed(call: dict) -> dict:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        return call | {"function": function | {"arguments": json.loads(function["arguments"])}}
    except ValueError:
        return call


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict | None = None

    @property
    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def engine_fields(self, max_tokens_default: int | None) -> dict:
        fields = super().engine_fields(max_tokens_default)
        if self.max_completion_tokens is not None:
            fields["max_tokens"] = self.max_completion_tokens
        return fields


class TokenizeRequest(_Fields):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True


class DetokenizeRequest(_Fields):
    model: str | None = None
    tokens: list[int]


def unknown_fields(body: _Fields) -> list[str]:
    """The fields of a request shardspec does not know, as paths (`metadata`, `messages.0.refusal`)."""
    found = list(body.model_extra or {})
    for name in [n for n in type(body).model_fields if n in body.model_fields_set]:  # sent, in the model's order
        value = getattr(body, name)
        if isinstance(value, _Fields):
            found += [f"{name}.{key}" for key in unknown_fields(value)]
        elif isinstance(value, list):
            found += [
                f"{name}.{i}.{key}" for i, v in enumerate(value) if isinstance(v, _Fields) for key in unknown_fields(v)
            ]
    return found


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ResponseIds:
    """Unique response ids (`cmpl-` and 24 hex digits or more): a random part drawn once, then a
    count. A uuid4 each would read the OS's entropy on every request, a system call the event
    loop waits for."""

    def __init__(self):
        self._random = uuid.uuid4().hex[:16]
        self._count = itertools.count()

    def new(self, prefix: str) -> str:
        return f"{prefix}-{self._random}{next(self._count):08x}"


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


def chat_choice(
    index: int, text: str | None, token_ids, finish_reason, *, delta: bool, first=False, logprobs=None, tool_calls=None
) -> dict:
    """A chat choice (`delta`: a streamed chunk's); `tool_calls` the message's calls, if any."""
    if delta:
        message = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        key = "delta"
    else:
        message, key = {"role": "assistant", "content": text}, "message"
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "index": index,
        key: message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "token_ids": list(token_ids),
    }


def completion_logprobs(token_ids, entries, token_text, offset: int = 0) -> dict:
    """OpenAI's completions `logprobs`: tokens, their logprobs, the top ones, text offsets;
    an entry None (an echoed prompt's first token) has null logprobs."""
    tokens = [token_text(t) for t in token_ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [e and e.logprob for e in entries],
        "top_logprobs": [e and {token_text(i): lp for i, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def prompt_logprobs(entries, token_text) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt token (the first None), {token id: its logprob,
    rank and text} for the token and the top N (rank null outside the top N)."""

    def one(entry) -> dict | None:
        if entry is None:
            return None
        ranked = {token: (lp, rank) for rank, (token, lp) in enumerate(entry.top, 1)}
        ranked.setdefault(entry.token_id, (entry.logprob, None))
        return {
            str(token): {"logprob": lp, "rank": rank, "decoded_token": token_text(token)}
            for token, (lp, rank) in ranked.items()
        }

    return [one(e) for e in entries]


def chat_logprobs(entries, token_text) -> dict:
    """OpenAI's chat `logprobs`: one entry a token, each with its top alternatives."""

    def one(token_id: int, logprob: float) -> dict:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [one(e.token_id, e.logprob) | {"top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]
    }
