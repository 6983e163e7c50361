"""`EventStream`: a server-sent events response that stops when its client goes away.

Starlette's StreamingResponse watches for the client leaving with an anyio task
group a response (on servers that speak ASGI 2.3, as uvicorn does): a cancel
scope, a task and their bookkeeping on every request, a tenth of the event
loop's time on short completions. The same watch in plain asyncio is one task:
it waits for `http.disconnect` and cancels the streaming one, whose generator's
`finally` then aborts the requests (streaming.stream).
"""

from __future__ import annotations

import asyncio

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class EventStream(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, streaming))
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not _saw_disconnect(watcher):  # cancelled by someone else (the server shutting down): theirs
                raise
            if hasattr(streaming, "uncancel"):  # Python 3.11+ counts cancellations: this one is handled
                streaming.uncancel()  # the client went away: the response ends here, as Starlette's does
        finally:
            watcher.cancel()


async def _cancel_on_disconnect(receive: Receive, streaming: asyncio.Task) -> None:
    """Returns (only) once it has cancelled `streaming`: its client has gone."""
    while (await receive())["type"] != "http.disconnect":
        pass
    streaming.cancel()


def _saw_disconnect(watcher: asyncio.Task) -> bool:
    return watcher.done() and not watcher.cancelled() and watcher.exception() is None
