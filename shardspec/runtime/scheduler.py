"""DPScheduler: continuous batching on every DP rank, in one host-side object.

Each request is routed to one DP rank (`routing.py`) and waits there. Every
`schedule()` plans one step, rank by rank, under that rank's limits
(`max_num_seqs` running sequences, `max_num_batched_tokens` tokens):

1. running sequences in decode get their 1 token first;
2. running sequences still in prefill get chunks of what budget is left
   (chunked prefill: with a budget of 8, a 20-token prompt runs as 8 + 8 + 4);
3. waiting sequences are admitted, oldest first, while pages allow;
4. a waiting sequence its own rank cannot admit (no pages, or no free sequence
   slot) moves to a rank that can (spill-over). Running sequences never move:
   their KV pages live on their rank.

Pages are allocated as chunks need them, `page_size` tokens at a time. When a
rank runs short, the most recently admitted running sequence is preempted by
recompute: its pages are freed and it waits again with prompt + the tokens it
has generated, which the next prefill recomputes (its output so far is kept).

Async scheduling: the engine plans step t+1 before it hands step t's samples to
`update()`. `schedule()` therefore counts tokens as computed when it schedules
them, and a sequence whose last token is step t's sample still decodes in step
t+1 with `FROM_PREVIOUS_STEP` in place of that token. Only sequences with no
work in flight are preempted; `update()` ignores results for sequences that
finished meanwhile.

Host cost: per step, work is proportional to the sequences that run in it (plus
the number of ranks); routing and statistics read per-rank counters kept up to
date in O(1), never a walk over the requests.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable, Mapping

from ..sizes import RuntimeSizes, pages_for
from .kv_pages import BlockTable
from .request import FinishReason, Output, Request
from .routing import RankCounters, Router
from .schedule import ScheduledChunk, StepSchedule
from .sequence import RUNNING as _RUNNING
from .sequence import UNKNOWN
from .sequence import WAITING as _WAITING
from .sequence import Rank as _Rank
from .sequence import Seq as _Seq
from .step_budget import balanced_budget


class DPScheduler:
    """Continuous batching over `sizes.dp_ranks` DP ranks (see the module doc).

    The engine calls `add_request` / `abort` at any time, then per step
    `schedule()` -> run the model -> `update(schedule, sampled)`; with
    `async_scheduling` it calls `schedule()` for step t+1 before `update()` of
    step t. Every added request finishes exactly once (stop / length / abort)
    and its `Output` comes back from `update()` or `take_finished()`.
    """

    def __init__(
        self,
        sizes: RuntimeSizes,
        routing: str = "balanced",
        eos_token_ids: Iterable[int] = (),
        async_scheduling: bool = False,
        balance_steps: bool | None = None,
    ):
        self.sizes = sizes
        self.async_scheduling = async_scheduling
        # Token-balanced steps are part of the `balanced` policy; the baselines keep
        # the reference system's full-budget lockstep steps unless asked otherwise.
        self.balance_steps = routing == "balanced" if balance_steps is None else balance_steps
        self._eos = frozenset(eos_token_ids)
        self._router = Router(routing, sizes.dp_ranks)
        self._counters = RankCounters(sizes.dp_ranks)
        self._ranks = [_Rank(r, sizes.pages_per_rank) for r in range(sizes.dp_ranks)]
        self._seqs: dict[int, _Seq] = {}  # unfinished
        self._by_request: dict[str, _Seq] = {}  # unfinished, by request id
        self._finished: list[Output] = []
        self._next_seq_id = 0
        self._step = 0  # the next schedule()'s step
        self._outstanding: collections.deque[int] = collections.deque()  # non-empty steps not yet updated
        self._preemptions = 0
        self._spills = 0

    # ------------------------------------------------------------------ requests

    def add_request(self, request: Request) -> int:
        """Route `request` to a rank, where it waits; return its seq_id (0, 1, 2, ...)."""
        self._check(request)
        # The one stop set: the request's own stop ids, and EOS unless it is ignored.
        stop = frozenset(request.stop_token_ids) | (frozenset() if request.ignore_eos else self._eos)
        seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
        n = len(request.prompt_token_ids)
        rank = self._router.pick(self._counters, n)
        seq = self._seqs[seq_id] = self._by_request[request.id] = _Seq(seq_id, request, rank, stop)
        self._counters.add(rank, n, n)
        self._push_waiting(self._ranks[rank], seq)
        return seq_id

    def abort(self, request_id: str) -> bool:
        """Finish an unfinished request as "abort" (its tokens so far kept); False if unknown or finished."""
        seq = self._by_request.get(request_id)
        if seq is None:
            return False
        self._finish(seq, "abort")
        return True

    def take_finished(self) -> list[Output]:
        out, self._finished = self._finished, []
        return out

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    def stats(self) -> dict:
        """Per-rank lists `running`, `waiting`, `pages_used`, `load` (tokens still to run, see
        routing.py); `max_kv_usage`: the MAX over ranks of pages used / pages per rank (a mean
        hides one full rank); cumulative `preemptions` and `spills`."""
        used = [r.pool.num_used for r in self._ranks]
        return {
            "running": [len(r.running) for r in self._ranks],
            "waiting": [r.num_waiting for r in self._ranks],
            "pages_used": used,
            "load": list(self._counters.load),
            "max_kv_usage": max(used) / self.sizes.pages_per_rank,
            "preemptions": self._preemptions,
            "spills": self._spills,
        }

    def _check(self, request: Request) -> None:
        n, s = len(request.prompt_token_ids), self.sizes
        where = f"request {request.id!r}"
        if n == 0:
            raise ValueError(f"{where}: empty prompt")
        if request.max_tokens < 1:
            raise ValueError(f"{where}: max_tokens={request.max_tokens} (must be >= 1)")
        if too_long := s.request_len_problem(n, request.max_tokens):
            raise ValueError(f"{where}: {too_long[0]} ({too_long[1]})")
        if request.id in self._by_request:
            raise ValueError(f"{where}: a request with this id is already running or waiting")

    # ------------------------------------------------------------------ schedule

    def schedule(self) -> StepSchedule:
        """Plan the next step: chunks grouped by rank (ascending), in admission order within a rank."""
        step, self._step = self._step, self._step + 1
        budget = self._step_budget()
        for rank in self._ranks:
            self._plan_running(rank, step, budget)
            self._admit(rank)
        self._spill()
        chunks: list[ScheduledChunk] = []
        for rank in self._ranks:
            self._emit(rank, step, chunks)
        if chunks:
            self._outstanding.append(step)
        return StepSchedule(tuple(chunks), step)

    def _step_budget(self) -> int:
        """Tokens each rank may run this step (see `step_budget.balanced_budget`)."""
        cap = self.sizes.max_num_batched_tokens
        if not self.balance_steps:
            return cap  # the reference system's lockstep steps: every rank its full budget
        return balanced_budget(
            self._counters.load, [len(r.running) for r in self._ranks], self.sizes.token_buckets, cap
        )

    def _plan_running(self, rank: _Rank, step: int, budget: int) -> None:
        """Set `plan` (tokens this step) of running sequences: decodes first, then prefill chunks."""
        ps = self.sizes.page_size
        may_guess, previous = self.async_scheduling, step - 1
        growing, prefills = [], []  # plans that need new pages; sequences in prefill
        for seq in rank.running.values():
            if seq.total - seq.computed > 1:
                prefills.append(seq)
            # A decode whose input is a sample not yet received runs only under async
            # scheduling, only if that sample comes from the previous step (the device
            # fills it in from there), and only if one more token is allowed after it.
            elif budget and (
                not seq.pending
                or (
                    may_guess
                    and seq.pending == 1
                    and seq.last_sample_step == previous
                    and len(seq.outputs) + 2 <= seq.max_tokens
                )
            ):
                seq.plan = 1
                budget -= 1
                if seq.computed % ps == 0:
                    growing.append(seq)
        need = len(growing)  # new pages the plans take
        for seq in prefills:
            if not budget:
                break
            n = min(seq.total - seq.computed, budget)
            seq.plan, budget = n, budget - n
            if k := pages_for(seq.computed + n, ps) - len(seq.table):
                need += k
                growing.append(seq)
        rank.budget = budget
        rank.pressed = need > rank.pool.num_free
        if rank.pressed:
            self._make_room(rank, need)
        for seq in growing:
            if seq.plan:  # not preempted or skipped by _make_room
                seq.table.append(rank.pool.allocate(pages_for(seq.computed + seq.plan, ps) - len(seq.table)))

    def _make_room(self, rank: _Rank, need: int) -> None:
        """Preempt the newest sequences with no work in flight until `need` pages fit."""
        ps, free = self.sizes.page_size, rank.pool.num_free
        for seq in reversed(list(rank.running.values())):
            if need <= free:
                return
            if seq.in_flight:
                continue
            need -= pages_for(seq.computed + seq.plan, ps) - pages_for(seq.computed, ps)
            free += len(seq.table)
            self._preempt(seq)
        # Async only: every sequence left has work in flight. Skip the newest
        # plans that need pages; they can be preempted once their work lands.
        for seq in reversed(rank.running.values()):
            if need <= free:
                return
            k = pages_for(seq.computed + seq.plan, ps) - pages_for(seq.computed, ps)
            if k:
                seq.plan, need = 0, need - k

    def _preempt(self, seq: _Seq) -> None:
        rank = self._ranks[seq.rank]
        del rank.running[seq.id]
        rank.pool.free(seq.table.release())
        self._counters.load[seq.rank] += seq.computed  # to be recomputed
        seq.table, seq.computed, seq.plan = None, 0, 0
        self._push_waiting(rank, seq)
        self._preemptions += 1

    def _admit(self, rank: _Rank) -> None:
        rank.blocked = False
        while (seq := self._front(rank)) is not None:
            if rank.pressed or len(rank.running) >= self.sizes.max_num_seqs:
                rank.blocked = True
                return
            if not rank.budget:
                return
            if not self._fits(rank, seq):
                rank.blocked = True
                return
            heapq.heappop(rank.waiting)
            rank.num_waiting -= 1
            self._start(rank, seq)

    def _spill(self) -> None:
        """Move waiting sequences of blocked ranks to ranks that can admit them now.

        A target needs a free seat, budget left and pages for the first chunk; a
        sequence moved there may start before the target's own waiting ones if
        those need more pages than it does."""
        for src in self._ranks:
            while src.blocked and (seq := self._front(src)) is not None:
                targets = [
                    r.index
                    for r in self._ranks
                    if r is not src
                    and not r.pressed
                    and r.budget
                    and len(r.running) < self.sizes.max_num_seqs
                    and self._fits(r, seq)
                ]
                if not targets:
                    break
                dst = self._ranks[self._router.pick(self._counters, seq.total, targets)]
                heapq.heappop(src.waiting)
                src.num_waiting -= 1
                self._counters.add(src.index, -seq.total, -seq.total, -1)
                self._counters.add(dst.index, seq.total, seq.total)
                seq.rank = dst.index
                self._start(dst, seq)
                self._spills += 1

    def _fits(self, rank: _Rank, seq: _Seq) -> bool:
        return pages_for(min(seq.total, rank.budget), self.sizes.page_size) <= rank.pool.num_free

    def _start(self, rank: _Rank, seq: _Seq) -> None:
        """Admit a waiting sequence (already taken off its waiting heap) with its first chunk."""
        n = min(seq.total, rank.budget)
        seq.status, seq.plan, rank.budget = _RUNNING, n, rank.budget - n
        seq.table = BlockTable(self.sizes.max_pages_per_seq)
        seq.table.append(rank.pool.allocate(pages_for(n, self.sizes.page_size)))
        rank.running[seq.id] = seq

    def _push_waiting(self, rank: _Rank, seq: _Seq) -> None:
        seq.status = _WAITING
        heapq.heappush(rank.waiting, seq.id)
        rank.num_waiting += 1

    def _front(self, rank: _Rank) -> _Seq | None:
        """The oldest sequence waiting on `rank`, dropping ids that left (aborted) on the way."""
        heap = rank.waiting
        while heap:
            seq = self._seqs.get(heap[0])
            if seq is not None and seq.status is _WAITING and seq.rank == rank.index:
                return seq
            heapq.heappop(heap)
        return None

    def _emit(self, rank: _Rank, step: int, out: list[ScheduledChunk]) -> None:
        """Turn the rank's plans into chunks (admission order) and advance the sequences."""
        r, new = rank.index, tuple.__new__
        computed = sampled = 0
        for seq in rank.running.values():
            n = seq.plan
            if not n:
                continue
            start = seq.computed
            end = seq.computed = start + n
            sample = end == seq.total
            # ScheduledChunk's fields in order, built without the keyword-argument
            # __new__ (~0.2 us a chunk instead of 0.3; a test checks they agree).
            out.append(
                new(
                    ScheduledChunk,
                    (
                        seq.id,
                        r,
                        UNKNOWN if seq.pending else seq.tokens_ro[start:end],
                        start,
                        seq.table.pages,
                        sample,
                        seq.sampling,
                        seq.total - seq.prompt_len,
                    ),
                )
            )  # output_index: tokens generated, received or not
            seq.plan = 0
            seq.in_flight += 1
            computed += n
            if sample:
                seq.pending += 1
                seq.total += 1
                seq.last_sample_step = step
                sampled += 1
        self._counters.load[r] += sampled - computed
        self._counters.tokens[r] += sampled

    # ------------------------------------------------------------------ update

    def update(self, schedule: StepSchedule, sampled: Mapping[int, int]) -> list[Output]:
        """Take the tokens sampled for `schedule` (seq_id -> token, one per chunk with `sample`);
        return every Output finished since the last call. Non-empty schedules come back once each,
        in order; results for sequences that finished meanwhile are ignored."""
        if not schedule.chunks:
            return self.take_finished()
        if not self._outstanding or schedule.step != self._outstanding[0]:
            expected = self._outstanding[0] if self._outstanding else "none"
            raise ValueError(
                f"update(): got step {schedule.step}, expected step {expected} "
                "(pass every non-empty schedule to update() once, in order)"
            )
        seqs = self._seqs
        missing = [c.seq_id for c in schedule.chunks if c.sample and c.seq_id not in sampled and c.seq_id in seqs]
        if missing:
            raise ValueError(f"update(): no sampled token for sequences {missing}")
        self._outstanding.popleft()
        for c in schedule.chunks:
            seq = seqs.get(c.seq_id)
            if seq is None:  # finished (or aborted) after this step was scheduled
                continue
            seq.in_flight -= 1
            if not c.sample:
                continue
            tok = int(sampled[c.seq_id])
            seq.pending -= 1
            seq.tokens[seq.prompt_len + len(seq.outputs)] = tok
            seq.outputs.append(tok)
            if tok in seq.stop:
                self._finish(seq, "stop")
            elif len(seq.outputs) >= seq.max_tokens:
                self._finish(seq, "length")
        return self.take_finished()

    def _finish(self, seq: _Seq, reason: FinishReason) -> None:
        rank = self._ranks[seq.rank]
        if seq.status is _RUNNING:
            del rank.running[seq.id]
            rank.pool.free(seq.table.release())
            seq.table = None
        else:
            rank.num_waiting -= 1  # its heap entry is dropped when it reaches the front
        self._counters.add(seq.rank, -(seq.total - seq.computed), -seq.total, -1)
        del self._seqs[seq.id], self._by_request[seq.request.id]
        seq.status = "finished"
        self._finished.append(Output(seq.request.id, seq.request.prompt_token_ids, tuple(seq.outputs), reason))
