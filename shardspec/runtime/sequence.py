"""One request's lifetime in the scheduler: what stays with it, and its state while it waits.

A running sequence's changing state (tokens, positions, pages, samples in
flight) lives in the arrays of `slots.py`, one slot per running sequence, so
that a decode step touches every running sequence with a few numpy
operations. A `Seq` keeps what does not change (the request, its stop ids)
and, while it waits, what it will start from: its tokens so far (the prompt,
plus the outputs it had when it was preempted).
"""

from __future__ import annotations

import enum
import time

import numpy as np

from .request import Request, RequestTimes


class Status(enum.Enum):
    WAITING = "waiting"  # on its rank's waiting queue, no slot, no pages
    RUNNING = "running"  # in a slot, holding pages
    FINISHED = "finished"


class Seq:
    """A request as the scheduler tracks it. Positions: [0, prompt_len) prompt, then outputs."""

    __slots__ = (
        "id",
        "request",
        "rank",
        "status",
        "slot",
        "stop",
        "tokens",
        "prompt_len",
        "keys",
        "claimed",
        "credit",
        "prefix_waits",
        "guide",
        "computed_before",
        "accepted_at",
        "admitted_at",
        "first_token_at",
    )

    def __init__(self, seq_id: int, request: Request, rank: int, stop: frozenset[int]):
        self.id, self.request, self.rank, self.status = seq_id, request, rank, Status.WAITING
        self.slot = -1  # its slot while running
        self.stop = np.array(sorted(stop), np.int32)
        self.prompt_len = len(request.prompt_token_ids)
        self.tokens = np.array(request.prompt_token_ids, np.int32)  # while waiting: what it starts from
        # Prefix caching (prefix_cache.py): the hash chain of its full pages so far, the keys
        # it claims on its rank, the cached tokens its rank's load was told it would skip
        # while it waits, and the steps it has waited for another sequence's prefix pages.
        self.keys: list[bytes] = []
        self.claimed: list[bytes] = []
        self.credit = 0
        self.prefix_waits = 0
        self.guide = None  # a constrained request's grammar state (structured.Guide)
        self.computed_before = 0  # tokens it had computed when last preempted: its next prefill recomputes them
        # time.monotonic() when the scheduler took it, first started it, and received its first token
        self.accepted_at, self.admitted_at, self.first_token_at = time.monotonic(), None, None

    @property
    def times(self) -> RequestTimes:
        return RequestTimes(self.accepted_at, self.admitted_at, self.first_token_at)

    @property
    def total(self) -> int:
        """Tokens known while it waits (prompt + outputs kept from before a preemption)."""
        return len(self.tokens)

    @property
    def outputs(self) -> tuple[int, ...]:
        """Outputs known while it waits."""
        return tuple(self.tokens[self.prompt_len :].tolist())
