"""Per-sequence and per-rank scheduler state (the DPScheduler's bookkeeping)."""

from __future__ import annotations

import numpy as np

from .kv_pages import BlockTable, PagePool
from .request import Request
from .schedule import FROM_PREVIOUS_STEP

WAITING, RUNNING = "waiting", "running"

# The token ids of a decode whose input is the previous step's sample.
UNKNOWN = np.full(1, FROM_PREVIOUS_STEP, np.int32)
UNKNOWN.flags.writeable = False


class Seq:
    """One request's state. Positions: [0, prompt_len) prompt, then outputs."""

    __slots__ = (
        "id",
        "request",
        "rank",
        "status",
        "prompt_len",
        "max_tokens",
        "sampling",
        "stop",
        "tokens",
        "tokens_ro",
        "outputs",
        "total",
        "computed",
        "pending",
        "in_flight",
        "last_sample_step",
        "table",
        "plan",
    )

    def __init__(self, seq_id: int, request: Request, rank: int, stop: frozenset[int]):
        self.id, self.request, self.rank, self.status, self.stop = seq_id, request, rank, WAITING, stop
        self.prompt_len, self.max_tokens = len(request.prompt_token_ids), request.max_tokens
        self.sampling = request.sampling
        # Every position's token; each entry is written once, so views of known positions never change.
        self.tokens = np.full(self.prompt_len + request.max_tokens, FROM_PREVIOUS_STEP, np.int32)
        self.tokens[: self.prompt_len] = request.prompt_token_ids
        self.tokens_ro = self.tokens.view()
        self.tokens_ro.flags.writeable = False
        self.outputs: list[int] = []
        self.total = self.prompt_len  # known tokens + samples scheduled but not yet received
        self.computed = 0  # tokens scheduled into the KV cache (optimistic under async scheduling)
        self.pending = 0  # samples scheduled, not yet received by update()
        self.in_flight = 0  # chunks scheduled, not yet passed to update()
        self.last_sample_step = -2
        self.table: BlockTable | None = None  # while running
        self.plan = 0  # tokens planned for the step being built


class Rank:
    __slots__ = ("index", "pool", "running", "waiting", "num_waiting", "budget", "pressed", "blocked")

    def __init__(self, index: int, num_pages: int):
        self.index = index
        self.pool = PagePool(num_pages)
        self.running: dict[int, Seq] = {}  # seq_id -> seq, in admission order
        self.waiting: list[int] = []  # heap of seq ids (arrival order); stale ids are skipped
        self.num_waiting = 0
        self.budget = 0  # tokens left in the step being built
        self.pressed = False  # this step: pages ran short (preempted or dropped work)
        self.blocked = False  # this step: its oldest waiting sequence could not be admitted here
