"""The HTTP routes: module-level handlers that read one `ServerState` (`app.state.server`).

The completions and chat handlers turn an OpenAI request into engine fields and
prompts, and `streaming` answers them; the rest read the state. `add_routes`
lists every route in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ShardspecError
from ..runtime.engine import Engine
from . import openai_api as api
from .chat_template import ChatTemplate
from .engine_loop import EngineLoop
from .event_stream import EventStream
from .http_errors import HTTPError
from .metrics import ServerMetrics
from .streaming import Reply, answer, stream, submit, token_text
from .tool_calls import ToolMode, tool_mode

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default
IGNORED_HEADER = "X-Ignored-Fields"  # the request fields the server did not know, and ignored
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerState:
    """What the handlers read: built once by `build_app`."""

    engine: Engine
    loop: EngineLoop  # the engine's thread: requests and aborts go through it
    metrics: ServerMetrics
    model_name: str  # the name clients ask for
    chat_template: ChatTemplate | None  # None: the checkpoint has none, and chat answers 400
    strict_fields: bool = False  # refuse unknown request fields (400) instead of ignoring them
    tool_call_parser: str | None = None  # reads tool calls from chat text (tool_choice "auto"): tool_calls.PARSERS
    logged_ignored: set[str] = dataclasses.field(default_factory=set)  # ignored names, logged once each
    ids: api.ResponseIds = dataclasses.field(default_factory=api.ResponseIds)  # each answer's id


async def server_state(request: Request) -> ServerState:
    """The app's ServerState (an async dependency: FastAPI runs a sync one on a worker thread)."""
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]


def add_routes(app: FastAPI) -> None:
    """Every route of the API, in the order /openapi.json lists them."""
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/tokenize", tokenize, methods=["POST"])
    app.add_api_route("/detokenize", detokenize, methods=["POST"])
    app.add_api_route("/tokenizer_info", tokenizer_info, methods=["GET"])


async def health(server: Server):
    """200 once the server listens (after warm-up); 500 when the engine thread has stopped."""
    if server.loop.error is not None:
        return JSONResponse(api.error_body(f"the engine stopped: {server.loop.error}", "server_error"), status_code=500)
    return {"status": "ok"}


async def models(server: Server):
    """The model served; `max_model_len` is the longest prompt + max_tokens it serves."""
    card = {"id": server.model_name, "object": "model", "created": 0, "owned_by": "shardspec"}
    card["max_model_len"] = server.engine.sizes.max_request_len
    return {"object": "list", "data": [card]}


async def prometheus(server: Server):
    """The metrics in Prometheus' text format."""
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def completions(body: api.CompletionRequest, server: Server):
    """OpenAI's completions: a choice a prompt; `max_tokens` 16 unless given."""
    _check_model(server, body.model)
    headers = _accept(server, body)
    fields = body.engine_fields(DEFAULT_MAX_TOKENS)
    prompts = body.prompts()
    echo = tuple(_prompt_text(server, p) for p in prompts) if body.echo else None
    return await _respond(server, body, body.samples(prompts), fields, "cmpl", chat=False, headers=headers, echo=echo)


async def chat(body: api.ChatRequest, server: Server):
    """OpenAI's chat completions, the messages through the checkpoint's chat template; without
    `max_tokens`, as many tokens as the server serves after the prompt."""
    _check_model(server, body.model)
    headers = _accept(server, body)
    tools = tool_mode(body.tools, body.tool_choice, server.tool_call_parser)
    ids = _chat_prompt(server, body.messages, body.tools if tools is not None else None)
    fields = body.engine_fields(None)
    if tools is not None and (structured := tools.structured_outputs()) is not None:
        if "structured_outputs" in fields:
            raise HTTPError(400, f"tool_choice {tools.kind} structures the output: leave out response_format", "tools")
        fields["structured_outputs"] = structured
    if fields["max_tokens"] is None:  # < 1 left: max_tokens 1 gets the request check's 400 (shorten the prompt)
        fields["max_tokens"] = max(1, server.engine.sizes.room_after(len(ids)))
    prompts = body.samples([{"prompt_token_ids": ids}])
    return await _respond(server, body, prompts, fields, "chatcmpl", chat=True, headers=headers, tools=tools)


def _accept(server: ServerState, body: api.CompletionRequest | api.ChatRequest) -> dict[str, str]:
    """400 for a field asking for what shardspec does not do yet, or (--strict-fields) one it
    does not know; otherwise the response headers that name the ignored fields."""
    unknown = api.unknown_fields(body)
    if unknown and server.strict_fields:
        raise HTTPError(400, f"{unknown[0]}: unknown field (this server refuses them: --strict-fields)", unknown[0])
    problem = body.not_yet_supported()
    if problem is not None:
        raise HTTPError(400, problem[1], problem[0])
    for name in set(unknown) - server.logged_ignored:
        log.warning("ignoring the request field %r, which shardspec does not know", name)
        server.logged_ignored.add(name)
    return {IGNORED_HEADER: ", ".join(unknown)} if unknown else {}


def _check_model(server: ServerState, name: str) -> None:
    if name != server.model_name:
        raise HTTPError(
            404,
            f"the model {name!r} does not exist; this server serves {server.model_name!r}",
            "model",
            code="model_not_found",
        )


def _chat_prompt(server: ServerState, messages: list[api.Message], tools: list[dict] | None = None) -> list[int]:
    """The prompt's token ids: the messages (and the tools offered) through the chat template,
    encoded without the tokenizer's special tokens (the template placed them)."""
    if server.chat_template is None:
        raise HTTPError(
            400,
            "this model has no chat template (tokenizer_config.json or chat_template.jinja); use /v1/completions",
            "messages",
        )
    try:
        text = server.chat_template.render([m.template_fields(i) for i, m in enumerate(messages)], tools)
    except ShardspecError as e:
        raise HTTPError(400, e.problems[0].message, "messages") from None
    return server.engine.tokenizer.encode(text, add_special_tokens=False).ids


async def _respond(
    server: ServerState,
    body: api.CompletionRequest | api.ChatRequest,
    prompts: list[dict],
    fields: dict,
    prefix: str,
    *,
    chat: bool,
    headers: dict[str, str],
    echo: tuple[str, ...] | None = None,
    tools: ToolMode | None = None,
):
    """Submit every prompt; stream the answer (`body.stream`), or answer once all have finished."""
    batch = submit(server.loop, prompts, fields)
    kind = ("chat.completion.chunk" if body.stream else "chat.completion") if chat else "text_completion"
    text = functools.partial(token_text, server.engine.tokenizer)
    shown = bool(body.logprobs) if chat else body.logprobs is not None  # chat's is a bool, completions' an int
    reply = Reply(
        server.ids.new(prefix),
        kind,
        server.model_name,
        chat,
        text,
        drawn=body.drawn,
        n=body.n,
        logprobs=shown,
        prompt_logprobs=body.prompt_logprobs is not None,
        echo=echo,
        tools=tools,
    )
    if body.stream:
        events = stream(server.loop, server.metrics, batch, reply, body.include_usage)
        return EventStream(events, headers=headers)
    return JSONResponse(await answer(server.loop, server.metrics, batch, reply), headers=headers)


def _prompt_text(server: ServerState, prompt: dict) -> str:
    """An echoed prompt's text: as sent, or its token ids decoded (special tokens kept)."""
    if "prompt" in prompt:
        return prompt["prompt"]
    ids = prompt["prompt_token_ids"]
    tokenizer = server.engine.tokenizer
    if tokenizer is None:
        return "".join(token_text(None, t) for t in ids)
    return tokenizer.decode(ids, skip_special_tokens=False)


async def tokenize(body: api.TokenizeRequest, server: Server):
    """A prompt's token ids as the server would run it (vLLM's route): `prompt` text, or chat
    `messages` through the chat template."""
    tokenizer = _tokenizer(server)
    if body.messages is not None:
        ids = _chat_prompt(server, body.messages)
    elif body.prompt is not None:
        ids = tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids
    else:
        raise HTTPError(400, "give prompt or messages", "prompt")
    return {"count": len(ids), "max_model_len": server.engine.sizes.max_request_len, "tokens": ids}


async def detokenize(body: api.DetokenizeRequest, server: Server):
    """Token ids back to text (special tokens kept)."""
    vocab = server.engine.plan.model.geometry.vocab_size
    bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < vocab), None)
    if bad is not None:
        raise HTTPError(400, f"tokens.{bad}: {body.tokens[bad]} is outside the vocabulary (0..{vocab - 1})", "tokens")
    return {"prompt": _tokenizer(server).decode(body.tokens, skip_special_tokens=False)}


async def tokenizer_info(server: Server):
    """What a client needs to count and stop tokens as the server does (vLLM's route)."""
    tokenizer = _tokenizer(server)
    eos = list(server.engine.plan.model.eos_token_ids)
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",  # what transformers loads a tokenizer.json as
        "vocab_size": tokenizer.get_vocab_size(),
        "eos_token": tokenizer.id_to_token(eos[0]) if eos else None,
        "eos_token_ids": eos,
        "model_max_length": server.engine.sizes.max_request_len,
    }


def _tokenizer(server: ServerState):
    if server.engine.tokenizer is None:
        raise HTTPError(400, "this model has no tokenizer (tokenizer.json): use token ids", "model")
    return server.engine.tokenizer
