"""`shardspec serve`'s HTTP API: OpenAI's completions and chat routes on FastAPI.

Routes: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent
events when `stream` is true, ending `data: [DONE]`), GET /v1/models, GET
/health, GET /metrics (Prometheus text), and vLLM's POST /tokenize, POST
/detokenize, GET /tokenizer_info. Request fields the server does not know are
ignored and named in the X-Ignored-Fields header (`strict_fields`: a 400). Errors use OpenAI's shape: a bad
field is a 400 naming it, an unknown model a 404, a full waiting queue a 429
with Retry-After, a server shutting down a 503. A client that disconnects
mid-stream aborts its requests, whose pages return to the pool.

`build_app` puts the parts together: the handlers are `routes`, the answers
(one JSON body or a stream of chunks) `streaming`, the error shapes
`http_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from ..runtime.engine import Engine
from . import openai_api as api
from .chat_template import load_chat_template
from .engine_loop import EngineLoop
from .http_errors import HTTPError, answer_field_problem, answer_http_error, answer_invalid_request
from .metrics import ServerMetrics
from .routes import ServerState, add_routes


def build_app(
    engine: Engine,
    served_model_name: str,
    *,
    warmup: bool = True,
    strict_fields: bool = False,
    tool_call_parser: str | None = None,
) -> FastAPI:
    """The app serving `engine` as model `served_model_name`; the engine thread runs from
    startup (after warm-up, so /health answers only once every bucket is compiled) to shutdown.
    `strict_fields`: refuse request fields the server does not know (400) instead of ignoring them.
    `tool_call_parser`: how chat text holds the model's tool calls (tool_calls.PARSERS), for
    tool_choice "auto"."""
    loop = EngineLoop(engine, engine.plan.strategy.runtime.max_waiting)
    chat_template = load_chat_template(engine.plan.model.checkpoint)
    app = FastAPI(title="shardspec", lifespan=functools.partial(_lifespan, warmup=warmup))
    metrics = ServerMetrics(engine)
    app.state.server = ServerState(
        engine, loop, metrics, served_model_name, chat_template, strict_fields, tool_call_parser=tool_call_parser
    )
    app.state.engine_loop = loop  # `shardspec serve` drains it on SIGTERM
    app.add_exception_handler(HTTPError, answer_http_error)
    app.add_exception_handler(RequestValidationError, answer_invalid_request)
    app.add_exception_handler(api.FieldProblem, answer_field_problem)
    add_routes(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI, *, warmup: bool):
    """Warm up (compile every bucket), run the engine thread while the app serves, then close it."""
    server: ServerState = app.state.server
    if warmup:
        await asyncio.to_thread(server.engine.warmup)
    server.loop.start()
    yield
    await asyncio.to_thread(server.loop.close)
