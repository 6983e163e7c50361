"""Every DP rank's scheduling state, and the events that change it.

What the scheduler's phases (`planning.py`) work on: the running sequences'
slots with each rank's page pool (`slots.py`), the waiting queues
(`waiting.py`), the prefix keys (`prefix_cache.py`), the routing counters and
policy (`routing.py`), and per-rank tallies. Each event below keeps all of them
consistent in one place: a sequence joins or leaves a rank, starts running, is
preempted or leaves its slot. Nothing here knows the scheduler, which owns the
requests and the steps and composes these events.
"""

from __future__ import annotations

import time

from ..sizes import RuntimeSizes
from .prefix_cache import NoPrefixCache, PrefixCache
from .routing import RankCounters, Router
from .sequence import Seq, Status
from .slots import Slots
from .waiting import WaitingQueues


class Ranks:
    def __init__(self, sizes: RuntimeSizes, routing: str, prefix_caching: bool, seqs: dict[int, Seq]):
        """`seqs`: the scheduler's unfinished sequences by id (the waiting queues hold ids)."""
        R = sizes.dp_ranks
        self.sizes = sizes
        self.router = Router(routing, R, sizes.max_num_batched_tokens)
        self.counters = RankCounters(R)
        self.slots = Slots(sizes)
        self.prefix = PrefixCache(self.slots.pools, sizes.page_size) if prefix_caching else NoPrefixCache()
        self.waiting = WaitingQueues(R, seqs)
        self.preemptions = 0
        self.spills = 0
        # Per rank, over admissions: tokens taken from the prefix cache, and tokens left to
        # compute (prompt, and what a preempted sequence recomputes).
        self.cached_tokens = [0] * R
        self.prefill_tokens = [0] * R
        self.recomputed_tokens = [0] * R  # of prefill_tokens: what preempted sequences had computed before

    # -- waiting sequences -----------------------------------------------------------------------

    def route(self, seq: Seq, candidates: list[int] | None = None) -> int:
        """The rank waiting `seq` should go to (see routing.py), among `candidates` (default: all)."""
        cached = None
        if self.router.uses_cache:
            cached = [self.prefix.expected_hit(r, seq) for r in range(self.sizes.dp_ranks)]
        return self.router.pick(self.counters, seq.total, cached, candidates)

    def join(self, rank: int, seq: Seq) -> None:
        """Waiting `seq` belongs to `rank` now: its load there is what it will still compute."""
        seq.rank, seq.credit = rank, self.prefix.expected_hit(rank, seq)
        self.counters.arrived(rank, seq.total, seq.total - seq.credit)
        self.prefix.claim(rank, seq)

    def leave(self, seq: Seq) -> None:
        """Waiting `seq` leaves its rank (finished, or moving)."""
        self.counters.left(seq.rank, seq.total - seq.credit, seq.total)
        self.prefix.unclaim(seq.rank, seq)

    def move(self, seq: Seq, src: int, dst: int) -> None:
        """Spill-over: the oldest sequence waiting on `src` moves to `dst`."""
        self.waiting.pop_front(src)
        self.leave(seq)
        self.join(dst, seq)
        self.spills += 1

    # -- running sequences -----------------------------------------------------------------------

    def start(self, rank: int, seq: Seq, budget: int, hit: list[int]) -> tuple[int, int]:
        """Admit a waiting sequence (already off its queue) on `rank` from its cached pages
        `hit`, with its first chunk under `budget`: (its slot, that chunk's size)."""
        cached = len(hit) * self.sizes.page_size
        n = min(seq.total - cached, budget)
        self.slots.pools[rank].acquire(hit)
        g = self.slots.start(seq, rank, n, hit)
        self.counters.started(rank, cached - seq.credit)
        self.prefix.started(rank, seq, len(hit))
        self.cached_tokens[rank] += cached
        self.prefill_tokens[rank] += seq.total - cached
        self.recomputed_tokens[rank] += max(0, min(seq.computed_before, seq.total) - cached)
        seq.computed_before = 0
        seq.rank, seq.status, seq.credit, seq.prefix_waits = rank, Status.RUNNING, 0, 0
        if seq.admitted_at is None:  # a preempted sequence keeps its first admission
            seq.admitted_at = time.monotonic()
        return g, n

    def preempt(self, g: int) -> None:
        """Recompute preemption of the sequence in slot g: its pages go, it waits again."""
        sl = self.slots
        rank, computed, lost = int(sl.rank_of(g)), int(sl.computed[g]), int(sl.pending[g])
        seq = self.release(g)  # samples not received (a lost KV cache's step in flight) are gone
        seq.computed_before = computed
        self.prefix.unclaim(rank, seq)  # its credit is what the rank holds, not what it claimed itself
        seq.credit = self.prefix.expected_hit(rank, seq)
        self.prefix.claim(rank, seq)
        self.counters.preempted(rank, computed - seq.credit, lost)
        self.waiting.push(rank, seq)
        self.preemptions += 1

    def release(self, g: int) -> Seq:
        """The sequence in slot g leaves it: its written full pages stay cached, the rest are freed."""
        self.prefix.cache_written(self.slots, g)
        rank, seq = int(self.slots.rank_of(g)), self.slots.release(g)
        self.prefix.stopped(rank, seq)
        return seq

    def finish(self, seq: Seq) -> None:
        """`seq` is done (whatever its state): its slot or queue place, pages and claims go."""
        if seq.status is Status.RUNNING:
            sl, g = self.slots, seq.slot
            self.counters.left(seq.rank, int(sl.total[g] - sl.computed[g]), int(sl.total[g]))
            self.release(g)
            self.prefix.unclaim(seq.rank, seq)
        else:
            self.waiting.discard(seq)
            self.leave(seq)

    # -- the whole KV cache ----------------------------------------------------------------------

    def kv_lost(self) -> None:
        """The KV cache's contents are gone: every running sequence waits again and recomputes."""
        self.prefix.lost()
        self.slots.written[:] = 0  # what the lost cache held is not cached again
        for g in self.slots.in_order().tolist():
            self.slots.in_flight[g] = 0
            self.preempt(g)

    def stats(self) -> dict:
        """Per-rank lists `running`, `waiting`, `pages_used`, `pages_cached`, `load`,
        `cached_tokens`, `prefill_tokens`, `recomputed_tokens` (see DPScheduler.stats)."""
        R, pools = self.sizes.dp_ranks, self.slots.pools
        return {
            "running": [self.slots.running(r) for r in range(R)],
            "waiting": self.waiting.counts(),
            "pages_used": [pool.num_used for pool in pools],
            "pages_cached": [pool.num_cached for pool in pools],
            "load": list(self.counters.load),
            "cached_tokens": list(self.cached_tokens),
            "prefill_tokens": list(self.prefill_tokens),
            "recomputed_tokens": list(self.recomputed_tokens),
        }
