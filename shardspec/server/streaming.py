"""One HTTP request's engine requests, and their deltas as OpenAI's answer.

`submit` hands every prompt of an HTTP request to the engine loop as one
`Batch` (their deltas all arrive on one queue). `deltas` reads that queue until
each has finished, timing them for the latency histograms. `answer` waits for
them all and gives one JSON body; `stream` gives server-sent events in OpenAI's
chunk format as they run:

    data: {"id": "cmpl-...", "object": "text_completion", "choices": [{"index": 0, "text": " there", ...}], ...}
    ...
    data: [DONE]

Whichever way a batch ends (finished, failed, or the client gone), its
requests are aborted, so their pages return to the pool; aborting a finished
request does nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable

import msgspec

from ..errors import ShardspecError
from ..runtime.outputs import TokenDelta
from ..runtime.request import Output
from . import openai_api as api
from .engine_loop import Closed, EngineLoop, QueueFull
from .http_errors import HTTPError
from .metrics import ServerMetrics
from .tool_calls import ToolMode

_json = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True)
class Batch:
    """The engine requests of one HTTP request: choice i is request `ids[i]`."""

    ids: tuple[str, ...]
    queue: asyncio.Queue  # every delta of theirs as steps make them; an exception if the engine failed
    arrival: float  # time.monotonic() once submitted: where the latency histograms start


@dataclasses.dataclass(frozen=True)
class Reply:
    """What every chunk of one answer shares."""

    id: str  # cmpl-... or chatcmpl-...
    object: str  # text_completion, chat.completion or chat.completion.chunk
    model: str  # the served model name
    chat: bool  # chat's choice shape (a message or delta), else completions'
    token_text: Callable[[int], str]  # a token as logprobs show it
    drawn: int = 1  # engine requests a prompt (`n`, or `best_of`): usage counts each prompt once
    n: int = 1  # choices a prompt: the `n` most likely of the `drawn`
    logprobs: bool = False  # show the tokens' logprobs (best_of may compute them only to rank)
    prompt_logprobs: bool = False  # show vLLM's `prompt_logprobs`
    echo: tuple[str, ...] | None = None  # completions' `echo`: each prompt's text, before its output
    tools: ToolMode | None = None  # chat: its output becomes tool calls (streamed once it has finished)

    def envelope(self, choices: list[dict], **extra) -> dict:
        return api.envelope(self.id, self.object, self.model, choices, **extra)


def submit(loop: EngineLoop, prompts: list[dict], fields: dict) -> Batch:
    """Every prompt (`prompt` or `prompt_token_ids`) with `fields` as an engine request, or
    none: one refused aborts those before it and is an HTTPError (400, 429 or 503)."""
    queue: asyncio.Queue = asyncio.Queue()
    submitted = []
    try:
        for prompt in prompts:
            submitted.append(loop.submit({**fields, **prompt}, queue))
    except (ShardspecError, QueueFull, Closed) as e:
        _abort(loop, submitted)
        raise _refusal(e) from None
    return Batch(tuple(submitted), queue, time.monotonic())


def _refusal(e: ShardspecError | QueueFull | Closed) -> HTTPError:
    if isinstance(e, QueueFull):
        return HTTPError(429, str(e), kind="rate_limit_error", headers={"Retry-After": "1"})
    if isinstance(e, Closed):
        return HTTPError(503, str(e), kind="server_error")
    problem = e.problems[0]
    return HTTPError(400, problem.message + (f"; {problem.hint}" if problem.hint else ""), problem.path or None)


def token_text(tokenizer, token_id: int) -> str:
    """A token's text, special tokens included; `token_id:N` for a model without a tokenizer."""
    if tokenizer is None:
        return f"token_id:{token_id}"
    return tokenizer.decode([token_id], skip_special_tokens=False)


def choice(reply: Reply, index: int, text: str, token_ids, finish, logprobs, *, delta=False, offset=0) -> dict:
    """Choice `index` (`delta`: of a chunk); `logprobs`: (tokens, their logprobs), if shown,
    whose completions' text_offset starts at `offset`."""
    if reply.chat:
        lp = None if logprobs is None else api.chat_logprobs(logprobs[1], reply.token_text)
        return api.chat_choice(index, text, token_ids, finish, delta=delta, logprobs=lp)
    lp = None if logprobs is None else api.completion_logprobs(*logprobs, reply.token_text, offset)
    return api.completion_choice(index, text, token_ids, finish, lp)


def final_choice(reply: Reply, index: int, prompt: int, out: Output, *, delta: bool = False) -> dict:
    """Choice `index` of a whole answer (`delta`: the one chunk of a streamed tool call): `out`,
    of prompt number `prompt`, with the prompt's text and its tokens' logprobs before its own
    where echoed, or as tool calls."""
    echo = reply.echo[prompt] if reply.echo is not None else ""
    logprobs = (out.output_token_ids, out.logprobs) if reply.logprobs else None
    if echo and logprobs is not None:
        logprobs = (out.prompt_token_ids + logprobs[0], out.prompt_logprobs + logprobs[1])
    if reply.tools is not None:
        found = _tool_choice(reply, index, out, logprobs, delta)
    else:
        found = choice(reply, index, echo + (out.text or ""), out.output_token_ids, out.finish_reason, logprobs)
    if reply.prompt_logprobs:
        found["prompt_logprobs"] = api.prompt_logprobs(out.prompt_logprobs, reply.token_text)
    return found


def _tool_choice(reply: Reply, index: int, out: Output, logprobs, delta: bool) -> dict:
    """A chat choice whose text is read as tool calls (a finished text only: one cut short by
    max_tokens is returned as text)."""
    text = out.text or ""
    calls, content = reply.tools.calls(text) if out.finish_reason == "stop" else ([], text)
    finish = "tool_calls" if calls else out.finish_reason
    lp = None if logprobs is None else api.chat_logprobs(logprobs[1], reply.token_text)
    called = [c.to_json(i if delta else None) for i, c in enumerate(calls)]
    return api.chat_choice(index, content, out.output_token_ids, finish, delta=delta, logprobs=lp, tool_calls=called)


def best(finals: list[Output], reply: Reply) -> list[tuple[int, Output]]:
    """(prompt number, output) of each choice: of each prompt's `drawn` outputs, the `n` whose
    tokens are most likely (the largest sum of logprobs; first drawn first among equals; one
    that failed or was aborted last)."""

    def rank(out: Output) -> tuple[bool, float]:
        return out.finish_reason in ("error", "abort"), -sum(t.logprob for t in out.logprobs or ())

    kept = []
    for p in range(len(finals) // reply.drawn):
        outputs = finals[p * reply.drawn : (p + 1) * reply.drawn]
        if reply.drawn > reply.n:
            outputs = sorted(outputs, key=rank)[: reply.n]
        kept += [(p, out) for out in outputs]
    return kept


async def deltas(batch: Batch, metrics: ServerMetrics) -> AsyncIterator[tuple[int, TokenDelta]]:
    """(choice index, delta) until every request of the batch has finished; each one's
    latencies go to `metrics` as it does. An engine that failed is a 500."""
    index = {rid: i for i, rid in enumerate(batch.ids)}
    first: dict[int, float] = {}  # choice -> when its first token came
    left = len(index)
    while left:
        for item in backlog(batch.queue, await batch.queue.get()):
            if isinstance(item, BaseException):
                raise HTTPError(500, f"the engine failed: {item}", kind="server_error")
            i = index[item.id]
            if item.token_ids and i not in first:
                first[i] = time.monotonic()
            if item.output is not None:
                left -= 1
                metrics.observe(batch.arrival, first.get(i), time.monotonic(), item.output)
            yield i, item


def backlog(queue: asyncio.Queue, head) -> list:
    """`head` and whatever else `queue` holds now, each request's deltas joined into one (first
    seen first): a reader that fell behind the engine sends one chunk for its backlog, not one a
    step, as vLLM's does. An exception ends the list."""
    joined: dict[str, TokenDelta] = {}
    item = head
    while True:
        if isinstance(item, BaseException):
            return [*joined.values(), item]
        joined[item.id] = joined[item.id].then(item) if item.id in joined else item
        if queue.empty():
            return list(joined.values())
        item = queue.get_nowait()


async def collect(batch: Batch, metrics: ServerMetrics) -> list[Output]:
    """Every request's Output, in choice order, once all have finished."""
    finals = [None] * len(batch.ids)
    async for i, item in deltas(batch, metrics):
        if item.output is not None:
            finals[i] = item.output
    return finals


async def answer(loop: EngineLoop, metrics: ServerMetrics, batch: Batch, reply: Reply) -> dict:
    """The whole answer as one JSON body: a choice a request, and their usage."""
    try:
        finals = await collect(batch, metrics)
    finally:
        _abort(loop, batch.ids)  # a no-op for finished requests; frees an abandoned one
    choices = [final_choice(reply, i, prompt, out) for i, (prompt, out) in enumerate(best(finals, reply))]
    return reply.envelope(choices, usage=_usage(finals, reply.drawn))


async def stream(
    loop: EngineLoop, metrics: ServerMetrics, batch: Batch, reply: Reply, include_usage: bool
) -> AsyncIterator[bytes]:
    """The answer as server-sent events: (chat) each choice's role, a chunk for each delta that
    carries something, (`include_usage`) the usage, then `[DONE]`; an engine failure is an
    error event before them."""
    offsets = [0] * len(batch.ids)  # completions' text_offset: token text streamed so far
    finished: list[Output] = []
    try:
        for piece in _openings(reply, len(batch.ids)):
            yield _sse(reply.envelope([piece]))
        try:
            async for i, item in deltas(batch, metrics):
                if (piece := _delta_choice(reply, i, item, offsets[i])) is not None:
                    yield _sse(reply.envelope([piece]))
                if item.logprobs is not None:  # text_offset is a logprobs field: no decode otherwise
                    offsets[i] += sum(len(reply.token_text(t)) for t in item.token_ids)
                if item.output is not None:
                    finished.append(item.output)
        except HTTPError as e:
            yield _sse(api.error_body(e.message, e.kind))
        if include_usage:
            yield _sse(reply.envelope([], usage=_usage(finished, reply.drawn)))
        yield b"data: [DONE]\n\n"
    finally:  # finished, or the client went away: free whatever still runs
        _abort(loop, batch.ids)


def _openings(reply: Reply, choices: int) -> list[dict]:
    """The chunk choices before any token: (chat) each one's role, as OpenAI's stream does, or
    (completions' echo) each one's prompt, as it was sent."""
    if reply.chat:
        return [api.chat_choice(i, "", (), None, delta=True, first=True) for i in range(choices)]
    if reply.echo is not None:
        return [api.completion_choice(i, reply.echo[i // reply.drawn], (), None) for i in range(choices)]
    return []


def _delta_choice(reply: Reply, index: int, item: TokenDelta, offset: int) -> dict | None:
    """A delta's chunk choice; None when it carries nothing (no token, no text, not the last).
    Tool calls come as one chunk once their text has finished."""
    if reply.tools is not None:
        return final_choice(reply, index, 0, item.output, delta=True) if item.output is not None else None
    finish = item.output.finish_reason if item.output is not None else None
    if not (item.token_ids or item.text or finish):
        return None
    logprobs = (item.token_ids, item.logprobs) if item.logprobs is not None else None
    piece = choice(reply, index, item.text or "", item.token_ids, finish, logprobs, delta=True, offset=offset)
    if reply.prompt_logprobs and item.output is not None:  # known once the request has finished
        piece["prompt_logprobs"] = api.prompt_logprobs(item.output.prompt_logprobs, reply.token_text)
    return piece


def _usage(outputs: list[Output], drawn: int) -> dict:
    """Prompt tokens once a prompt (its `drawn` samples share it); every sample's output tokens,
    the ones `best_of` drew and did not keep too (the server generated them)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs) // drawn
    return api.usage(prompt, sum(len(o.output_token_ids) for o in outputs))


def _abort(loop: EngineLoop, ids: Iterable[str]) -> None:
    for rid in ids:
        loop.abort(rid)


def _sse(payload: dict) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"  # one a chunk: msgspec's encoder, 10x json.dumps
