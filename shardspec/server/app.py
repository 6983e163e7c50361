"""`shardspec serve`'s HTTP API: OpenAI's completions and chat routes on FastAPI.

Routes: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent
events when `stream` is true, ending `data: [DONE]`), GET /v1/models, GET
/health, GET /metrics (Prometheus text). Errors use OpenAI's shape: a bad
field is a 400 naming it, an unknown model a 404, a full waiting queue a 429
with Retry-After, a server shutting down a 503. A client that disconnects
mid-stream aborts its requests, whose pages return to the pool.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ShardspecError
from ..runtime.engine import Engine
from . import openai_api as api
from .chat_template import load_chat_template
from .engine_loop import Closed, EngineLoop, QueueFull
from .metrics import ServerMetrics

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default


class HTTPError(Exception):
    """An answer in OpenAI's error shape: status, message, the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind="invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.code, self.headers = code, headers


def build_app(engine: Engine, served_model_name: str, *, warmup: bool = True) -> FastAPI:
    """The app serving `engine` as model `served_model_name`; the engine thread runs from
    startup (after warm-up, so /health answers only once every bucket is compiled) to shutdown."""
    loop = EngineLoop(engine, engine.plan.strategy.runtime.max_waiting)
    metrics = ServerMetrics(engine)
    chat_template = load_chat_template(engine.plan.model.checkpoint)

    async def lifespan(app: FastAPI):
        if warmup:
            await asyncio.to_thread(engine.warmup)
        loop.start()
        yield
        await asyncio.to_thread(loop.close)

    app = FastAPI(title="shardspec", lifespan=lifespan)
    app.state.engine_loop = loop

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        body = api.error_body(e.message, e.kind, e.param, e.code)
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if "input" in first and first.get("type") != "missing":
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
        return JSONResponse(api.error_body(message, param=param), status_code=400)

    @app.get("/health")
    async def health():
        if loop.error is not None:
            return JSONResponse(api.error_body(f"the engine stopped: {loop.error}", "server_error"), status_code=500)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": served_model_name, "object": "model", "created": 0, "owned_by": "shardspec"}
        card["max_model_len"] = engine.sizes.max_model_len
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def check_model(name: str) -> None:
        if name != served_model_name:
            raise HTTPError(
                404,
                f"the model {name!r} does not exist; this server serves {served_model_name!r}",
                "model",
                code="model_not_found",
            )

    def submit(prompts: list[dict], fields: dict) -> tuple[list[str], asyncio.Queue]:
        """Every prompt as an engine request; their deltas all arrive on one queue."""
        queue: asyncio.Queue = asyncio.Queue()
        submitted = []
        try:
            for prompt in prompts:
                submitted.append(loop.submit({**fields, **prompt}, queue))
        except (ShardspecError, QueueFull, Closed) as e:
            for rid in submitted:
                loop.abort(rid)
            if isinstance(e, QueueFull):
                raise HTTPError(429, str(e), kind="rate_limit_error", headers={"Retry-After": "1"}) from None
            if isinstance(e, Closed):
                raise HTTPError(503, str(e), kind="server_error") from None
            problem = e.problems[0]
            param = problem.path or None
            raise HTTPError(400, problem.message + (f"; {problem.hint}" if problem.hint else ""), param) from None
        return submitted, queue

    def token_text(token_id: int) -> str:
        if engine.tokenizer is None:
            return f"token_id:{token_id}"
        return engine.tokenizer.decode([token_id], skip_special_tokens=False)

    @app.post("/v1/completions")
    async def completions(body: api.CompletionRequest, request: Request):
        check_model(body.model)
        fields = body.engine_fields(DEFAULT_MAX_TOKENS)
        return await respond(body, request, body.prompts(), fields, "cmpl", chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: api.ChatRequest, request: Request):
        check_model(body.model)
        if chat_template is None:
            raise HTTPError(
                400,
                "this model has no chat template (tokenizer_config.json or chat_template.jinja); use /v1/completions",
                "messages",
            )
        fields = body.engine_fields(None)  # no max_tokens: as long as the context allows
        try:
            text = chat_template.render([m.model_dump(exclude_none=True) for m in body.messages])
        except ShardspecError as e:
            raise HTTPError(400, e.problems[0].message, "messages") from None
        ids = engine.tokenizer.encode(text, add_special_tokens=False).ids
        if fields["max_tokens"] is None:
            fields["max_tokens"] = max(1, engine.sizes.max_model_len - len(ids))
        return await respond(body, request, [{"prompt_token_ids": ids}], fields, "chatcmpl", chat=True)

    def choice(i, text, token_ids, finish, entries, chat: bool, *, delta: bool = False, offset: int = 0) -> dict:
        if chat:
            lp = None if entries is None else api.chat_logprobs(entries, token_text)
            return api.chat_choice(i, text, token_ids, finish, delta=delta, logprobs=lp)
        lp = None if entries is None else api.completion_logprobs(entries, token_text, offset)
        return api.completion_choice(i, text, token_ids, finish, lp)

    async def respond(body, request: Request, prompts, fields, prefix: str, *, chat: bool):
        rids, queue = submit(prompts, fields)
        index = {r: i for i, r in enumerate(rids)}  # request id -> its choice
        arrival = time.monotonic()
        rid = api.new_id(prefix)
        kind = "chat.completion" if chat else "text_completion"
        if body.stream:
            return StreamingResponse(
                stream(index, queue, rid, kind + (".chunk" if chat else ""), chat, body.include_usage, arrival),
                media_type="text/event-stream",
            )
        try:
            finals = await collect(index, queue, arrival)
        finally:
            for r in rids:
                loop.abort(r)  # a no-op for finished requests; frees an abandoned one
        choices = [
            choice(i, out.text or "", out.output_token_ids, out.finish_reason, out.logprobs, chat)
            for i, out in enumerate(finals)
        ]
        n_prompt = sum(len(o.prompt_token_ids) for o in finals)
        n_out = sum(len(o.output_token_ids) for o in finals)
        return api.envelope(rid, kind, served_model_name, choices, usage=api.usage(n_prompt, n_out))

    async def deltas(index: dict[str, int], queue: asyncio.Queue, arrival: float):
        """(choice index, delta) until every request of the HTTP request has finished."""
        first: dict[int, float] = {}
        left = len(index)
        while left:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise HTTPError(500, f"the engine failed: {item}", kind="server_error")
            i = index[item.id]
            if item.token_ids and i not in first:
                first[i] = time.monotonic()
            if item.output is not None:
                left -= 1
                metrics.observe(arrival, first.get(i), time.monotonic(), len(item.output.output_token_ids))
            yield i, item

    async def collect(index, queue, arrival) -> list:
        finals = [None] * len(index)
        async for i, item in deltas(index, queue, arrival):
            if item.output is not None:
                finals[i] = item.output
        return finals

    async def stream(index, queue, rid, kind, chat: bool, include_usage: bool, arrival) -> AsyncIterator[str]:
        offsets = [0] * len(index)  # completions' text_offset: token text streamed so far
        usage = [0, 0]
        try:
            if chat:  # the role first, as OpenAI's stream does
                for i in range(len(index)):
                    first = api.chat_choice(i, "", (), None, delta=True, first=True)
                    yield _sse(api.envelope(rid, kind, served_model_name, [first]))
            try:
                async for i, item in deltas(index, queue, arrival):
                    finish = item.output.finish_reason if item.output is not None else None
                    if item.token_ids or item.text or finish:
                        piece = choice(
                            i,
                            item.text or "",
                            item.token_ids,
                            finish,
                            item.logprobs,
                            chat,
                            delta=True,
                            offset=offsets[i],
                        )
                        if item.logprobs is not None:  # text_offset is a logprobs field: no decode otherwise
                            offsets[i] += sum(len(token_text(t)) for t in item.token_ids)
                        yield _sse(api.envelope(rid, kind, served_model_name, [piece]))
                    if item.output is not None:
                        usage[0] += len(item.output.prompt_token_ids)
                        usage[1] += len(item.output.output_token_ids)
            except HTTPError as e:
                yield _sse(api.error_body(e.message, e.kind))
            if include_usage:
                yield _sse(api.envelope(rid, kind, served_model_name, [], usage=api.usage(*usage)))
            yield "data: [DONE]\n\n"
        finally:  # finished, or the client went away: free whatever still runs
            for r in index:
                loop.abort(r)

    return app


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
