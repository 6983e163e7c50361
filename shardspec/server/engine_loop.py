"""The engine on its own thread, with asyncio on the other side: what the HTTP server drives.

One thread steps the engine (`Engine.step_deltas`) while it has work and sleeps
on an event when it has none. Each request's deltas go to its own
`asyncio.Queue` through the event loop (`call_soon_threadsafe`); the last one
carries its Output. Submitting and aborting take the engine's lock, so they
are safe from the event loop's thread while a step runs.

The waiting queue is bounded (`runtime.max_waiting`): a submit beyond it
raises `QueueFull` at once, never a hang. `close()` stops accepting, aborts
what is still in flight (each request still gets its one final delta) and
joins the thread.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping

from ..errors import ShardspecError
from ..runtime.engine import Engine, TokenDelta


class QueueFull(Exception):
    """More requests wait than `runtime.max_waiting` allows."""


class Closed(Exception):
    """The server is shutting down."""


class EngineLoop:
    def __init__(self, engine: Engine, max_waiting: int):
        self.engine = engine
        self.max_waiting = max_waiting
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._work = threading.Event()
        self._closing = False
        self._ids = itertools.count()
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self._thread = threading.Thread(target=self._run, name="shardspec-engine", daemon=True)

    def start(self) -> None:
        self.engine.follow_text = True
        self._thread.start()

    def submit(self, fields: Mapping) -> tuple[str, asyncio.Queue]:
        """Validate and add a request (ShardspecError if bad); its deltas arrive on the queue."""
        if self._closing:
            raise Closed("the server is shutting down")
        with self.engine.lock:
            if sum(self.engine.scheduler.stats()["waiting"]) >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are waiting (runtime.max_waiting)")
            rid = f"req-{next(self._ids)}"
            queue: asyncio.Queue = asyncio.Queue()
            self._queues[rid] = (asyncio.get_running_loop(), queue)
            try:
                self.engine.add_request(**{**fields, "id": rid})
            except ShardspecError:
                del self._queues[rid]
                raise
        self._work.set()
        return rid, queue

    def abort(self, rid: str) -> None:
        """Finish a request early (a client went away); its final delta still arrives."""
        if self.engine.abort(rid):
            self._work.set()

    def close(self, timeout: float = 10.0) -> None:
        self._closing = True
        with self.engine.lock:
            for rid in list(self._queues):
                self.engine.abort(rid)
        self._work.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                if not self.engine.has_unfinished():
                    if self._closing:
                        return
                    self._work.wait(0.5)
                    self._work.clear()
                    continue
                for delta in self.engine.step_deltas():
                    self._deliver(delta)
        except BaseException as e:  # the engine broke: fail every waiting client rather than hang them
            self.error = e
            for rid in list(self._queues):
                self._deliver(TokenDelta(rid, (), None, None), error=e)

    def _deliver(self, delta: TokenDelta, error: BaseException | None = None) -> None:
        if delta.output is not None or error is not None:
            target = self._queues.pop(delta.id, None)
        else:
            target = self._queues.get(delta.id)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, error if error is not None else delta)
