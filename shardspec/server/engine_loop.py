"""The engine on its own thread, with asyncio on the other side: what the HTTP server drives.

Submitting a request checks it at once (`Engine.validate`, the one check: a
bad one is the caller's error) and puts the checked Request in an inbox;
aborts go there too. The engine thread, each turn,
takes the inbox, applies it, and steps (`Engine.step_deltas`) while there is
work, sleeping on an event when there is none. Each request's deltas go to the
`asyncio.Queue` its caller gave (one per HTTP request, shared by its prompts),
all of a step's in one hand-over to the event loop (`call_soon_threadsafe`);
a request's last delta carries its Output.

Across processes (`jax.distributed`) every process runs this loop and only
process 0 takes HTTP. Each turn process 0 broadcasts its inbox (and, at the
end, "stop") before anyone applies it, so every process adds and aborts the
same requests at the same step and its deterministic scheduler stays in step
with the others: the collectives inside the step then match. The requests go
across as the fields of the Requests process 0 checked, and are taken as
they are.

The waiting queue is bounded (`runtime.max_waiting`): a submit beyond it
raises `QueueFull` at once, never a hang. `close()` stops accepting, aborts
what is still in flight (each request still gets its one final delta), tells
the other processes to stop and joins the thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Mapping

from .. import distributed
from ..runtime.engine import Engine, TokenDelta
from ..runtime.request import Request

IDLE_WAIT_S = 0.5  # an idle turn: how long process 0 waits for work before its next (empty) broadcast


class QueueFull(Exception):
    """More requests wait than `runtime.max_waiting` allows."""


class Closed(Exception):
    """The server is shutting down."""


class EngineLoop:
    def __init__(self, engine: Engine, max_waiting: int):
        self.engine = engine
        self.max_waiting = max_waiting
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._inbox: list[tuple] = []  # ("add", Request) and ("abort", id), in arrival order
        self._inbox_lock = threading.Lock()
        # Requests the engine holds unadmitted, as of its last turn plus those taken since: what
        # submit counts against max_waiting without the engine's lock (held for a whole step).
        self._waiting = 0
        self._work = threading.Event()
        self._closing = False
        self._ids = itertools.count()
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self._thread = threading.Thread(target=self.run, name="shardspec-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, fields: Mapping, queue: asyncio.Queue) -> str:
        """Check a request (ShardspecError if bad) and queue it; its deltas arrive on `queue`
        (of the running event loop). Returns its id."""
        if self._closing:
            raise Closed("the server is shutting down")
        rid = f"req-{next(self._ids)}"
        request = self.engine.validate({**fields, "id": rid}, rid)
        with self._inbox_lock:
            queued = sum(1 for kind, _ in self._inbox if kind == "add")
            if self._waiting + queued >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are waiting (runtime.max_waiting)")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
            self._inbox.append(("add", request))
        self._work.set()
        return rid

    def abort(self, rid: str) -> None:
        """Finish a request early (a client went away); its final delta still arrives."""
        with self._inbox_lock:
            if rid in self._queues:
                self._inbox.append(("abort", rid))
        self._work.set()

    def drain(self) -> None:
        """Stop accepting and abort everything in flight: each request ends with its final delta."""
        self._closing = True
        with self._inbox_lock:
            self._inbox += [("abort", rid) for rid in self._queues]
        self._work.set()

    def close(self, timeout: float = 10.0) -> None:
        """`drain()`, then stop the loop (on every process) and join its thread."""
        self.drain()
        self._thread.join(timeout)

    def run(self) -> None:
        """The loop: the engine thread on process 0, the main thread on every other process."""
        try:
            while True:
                stop = self._turn()
                if stop:
                    return
        except BaseException as e:  # the engine broke: fail every waiting client rather than hang them
            self.error = e
            self._deliver([TokenDelta(rid, (), None, None) for rid in list(self._queues)], error=e)

    def _turn(self) -> bool:
        """Take the inbox (process 0's, on every process), apply it, step once; True: stop."""
        busy = self.engine.has_unfinished()
        if not busy and distributed.is_main() and not self._closing:
            self._work.wait(IDLE_WAIT_S)
            self._work.clear()
        with self._inbox_lock:
            events, self._inbox = self._inbox, []
            self._waiting += sum(1 for kind, _ in events if kind == "add")
            stop = self._closing and not events and not busy
        events, stop = _shared(events, stop)
        for kind, value in events:
            if kind == "add":
                self.engine.accept(value)  # checked by process 0's submit
            else:
                self.engine.abort(value)
        if stop:
            return True
        if self.engine.has_unfinished():
            self._deliver(self.engine.step_deltas())
        waiting = sum(self.engine.stats().waiting)
        with self._inbox_lock:
            self._waiting = waiting
        return False

    def _deliver(self, deltas: list[TokenDelta], error: BaseException | None = None) -> None:
        """Hand a step's deltas to their queues: one wake-up of each event loop, not one a delta."""
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        with self._inbox_lock:
            for delta in deltas:
                last = delta.output is not None or error is not None
                target = self._queues.pop(delta.id, None) if last else self._queues.get(delta.id)
                if target is not None:  # process 0 only: the others serve no client
                    loop, queue = target
                    batches.setdefault(loop, []).append((queue, error if error is not None else delta))
        for loop, items in batches.items():
            loop.call_soon_threadsafe(_put_all, items)


def _shared(events: list[tuple], stop: bool) -> tuple[list[tuple], bool]:
    """Process 0's turn (its events and whether to stop) on every process of a cluster."""
    if distributed.process_count() == 1:
        return events, stop
    wire = [(kind, value.to_json() if kind == "add" else value) for kind, value in events]
    message = json.loads(distributed.broadcast_text(json.dumps({"events": wire, "stop": stop})))
    events = [(kind, Request.from_json(value) if kind == "add" else value) for kind, value in message["events"]]
    return events, message["stop"]


def _put_all(items) -> None:
    for queue, item in items:
        queue.put_nowait(item)
