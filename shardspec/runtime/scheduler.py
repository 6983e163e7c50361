"""DPScheduler: continuous batching on every DP rank, in one host-side object.

Each request is routed to one DP rank (`routing.py`) and waits there. Every
`schedule()` plans one step (`planning.py`) under each rank's limits
(`max_num_seqs` running sequences, `max_num_batched_tokens` tokens): running
sequences first, then admissions, then spill-over of waiting sequences to
ranks that can take them.

Pages are allocated as chunks need them, `page_size` tokens at a time. With
prefix caching (`prefix_cache.py`) a sequence starts from the longest run of
full pages its rank has cached for its tokens; the pages it fills are cached as
the steps that wrote them come back (its prompt's) or as it leaves its slot
(its outputs'). When a rank runs short, the most recently admitted running sequence is preempted by
recompute: its pages are freed and it waits again with prompt + the tokens it
has generated, which the next prefill recomputes (its output so far is kept).

Async scheduling: the engine plans step t+1 before it hands step t's samples to
`update()`. `schedule()` therefore counts tokens as computed when it schedules
them, and a sequence whose last token is step t's sample still decodes in step
t+1 with `FROM_PREVIOUS_STEP` in place of that token. Only sequences with no
work in flight are preempted; `update()` ignores results for sequences that
finished meanwhile.

Host cost: the running sequences are arrays (`slots.py`), so a step costs a few
numpy operations over all of them plus Python work only for what changes
(arrivals, admissions, preemptions, finishes); routing reads per-rank counters
kept up to date by events, never a walk over the requests.

The ranks' state and its events are `ranks.py`; the phases of a step are
`planning.py`, which work on that state and never see this class.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Mapping

import numpy as np

from ..sizes import RuntimeSizes
from . import planning, structured
from .ranks import Ranks
from .request import FinishReason, Output, Request
from .schedule import StepSchedule
from .sequence import Seq, Status
from .step_budget import balanced_budget
from .step_time import timed_budget, work_in_hand
from .structured import Grammars


class DPScheduler:
    """Continuous batching over `sizes.dp_ranks` DP ranks (see the module doc).

    The engine calls `add_request` / `abort` at any time, then per step
    `schedule()` -> run the model -> `update(schedule, sampled)`; with
    `async_scheduling` it calls `schedule()` for step t+1 before `update()` of
    step t. Every added request finishes exactly once (stop / length / abort / error)
    and its `Output` comes back from `update()` or `take_finished()`; a step that
    fails is handed to `fail()` (or, with its KV cache lost, `kv_lost()`) instead.
    """

    def __init__(
        self,
        sizes: RuntimeSizes,
        routing: str = "balanced",
        eos_token_ids: Iterable[int] = (),
        async_scheduling: bool = False,
        balance_steps: bool | None = None,
        prefix_caching: bool = True,
        grammars: Grammars | None = None,
    ):
        self.sizes = sizes
        self.async_scheduling = async_scheduling
        # Token-balanced steps are part of the `balanced` policy; the baselines keep
        # the reference system's full-budget lockstep steps unless asked otherwise.
        self.balance_steps = routing == "balanced" if balance_steps is None else balance_steps
        self._eos = frozenset(eos_token_ids)
        self._grammars = grammars  # the grammar engine of requests with structured outputs
        self._seqs: dict[int, Seq] = {}  # unfinished
        self._by_request: dict[str, Seq] = {}  # unfinished, by request id
        self.ranks = Ranks(sizes, routing, prefix_caching, self._seqs)
        self._finished: list[Output] = []
        self._next_seq_id = 0
        self._step = 0  # the next schedule()'s step
        self._outstanding: collections.deque[int] = collections.deque()  # non-empty steps not yet updated

    # -- requests ------------------------------------------------------------------------------

    def add_request(self, request: Request) -> int:
        """Route `request` to a rank, where it waits; return its seq_id (0, 1, 2, ...).

        ValueError for a request no rank can ever run or a duplicate id: O(1) checks of
        this scheduler's contract; a request's fields are validated before it gets here
        (`requests_io.make_request`)."""
        self._check(request)
        # The one stop set: the request's own stop ids, and EOS unless it is ignored.
        stop = frozenset(request.stop_token_ids) | (frozenset() if request.ignore_eos else self._eos)
        seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
        seq = self._seqs[seq_id] = self._by_request[request.id] = Seq(seq_id, request, -1, stop)
        if request.structured_outputs is not None:
            seq.guide = self._grammars.guide(request.structured_outputs)
        ranks = self.ranks
        ranks.join(ranks.route(seq), seq)
        ranks.waiting.push(seq.rank, seq)
        return seq_id

    def abort(self, request_id: str, reason: FinishReason = "abort") -> bool:
        """Finish an unfinished request now (its tokens so far kept), as "abort" or, for a stop
        string the engine found, "stop"; False if unknown or finished."""
        seq = self._by_request.get(request_id)
        if seq is None:
            return False
        self._finish(seq, reason)
        return True

    def fail(self, schedule: StepSchedule, error: str) -> None:
        """Step `schedule` failed and never reaches `update()`: the requests in it finish as
        "error" with `error` (their pages return); every other request runs on."""
        if len(schedule) and schedule.step in self._outstanding:
            self._outstanding.remove(schedule.step)
        slots = self.ranks.slots
        live = schedule.seq_ids[slots.seq_id[schedule.slots] == schedule.seq_ids]
        for seq_id in np.unique(live).tolist():
            self._finish(self._seqs[seq_id], "error", error)

    def kv_lost(self, abandoned: StepSchedule | None = None) -> None:
        """The KV cache is gone (a failed step consumed it): every running sequence waits
        again and recomputes, as after a preemption. `abandoned`: a step in flight that read
        the lost cache; it never reaches `update()`."""
        if abandoned is not None and abandoned.step in self._outstanding:
            self._outstanding.remove(abandoned.step)
        self.ranks.kv_lost()

    def take_finished(self) -> list[Output]:
        out, self._finished = self._finished, []
        return out

    def request_of(self, seq_id: int) -> Request | None:
        """An unfinished sequence's request (None once it finished)."""
        seq = self._seqs.get(seq_id)
        return seq.request if seq is not None else None

    def outputs_of(self, request_id: str) -> tuple[int, ...]:
        """An unfinished request's output tokens taken by `update()` so far."""
        seq = self._by_request[request_id]
        if seq.status is not Status.RUNNING:
            return seq.outputs
        sl, g = self.ranks.slots, seq.slot
        return tuple(sl.tokens[g, sl.prompt_len[g] : sl.prompt_len[g] + sl.received[g]].tolist())

    def sequence(self, request_id: str) -> Seq | None:
        """An unfinished request's sequence (its scheduling state); None once finished."""
        return self._by_request.get(request_id)

    def has_unfinished(self) -> bool:
        """Requests still running or waiting, or finished with their Output not yet taken."""
        return bool(self._seqs) or bool(self._finished)

    def stats(self) -> dict:
        """Per-rank lists `running`, `waiting`, `pages_used` (held), `pages_cached` (holding a
        prefix key, held or idle), `load` (tokens still to run, see routing.py),
        `cached_tokens`, `prefill_tokens` and `recomputed_tokens` (over admissions: tokens taken
        from the prefix cache, tokens left to compute, and of those what a preempted sequence
        had computed before); `max_kv_usage`: the MAX over ranks of pages held
        / pages per rank (a mean hides one full rank); cumulative `preemptions` and `spills`."""
        stats = self.ranks.stats()
        stats["max_kv_usage"] = max(stats["pages_used"]) / self.sizes.pages_per_rank
        stats["preemptions"], stats["spills"] = self.ranks.preemptions, self.ranks.spills
        return stats

    def _check(self, request: Request) -> None:
        n, where = len(request.prompt_token_ids), f"request {request.id!r}"
        if n == 0:
            raise ValueError(f"{where}: empty prompt")
        if request.max_tokens < 1:
            raise ValueError(f"{where}: max_tokens={request.max_tokens} (must be >= 1)")
        if too_long := self.sizes.request_len_problem(n, request.max_tokens):
            raise ValueError(f"{where}: {too_long[0]} ({too_long[1]})")
        if request.id in self._by_request:
            raise ValueError(f"{where}: a request with this id is already running or waiting")
        if request.structured_outputs is not None and self._grammars is None:
            raise ValueError(f"{where}: structured outputs need a scheduler with a grammar engine")

    # -- schedule ------------------------------------------------------------------------------

    def schedule(self, step_costs_ms: Mapping[int, float] | None = None) -> StepSchedule:
        """Plan the next step: chunks grouped by rank (ascending), in admission order within a rank.

        `step_costs_ms` ({bucket: ms} a step costs, `step_costs.py`), when known: `balanced`
        steps minimise modelled time per real token instead of padding."""
        step, self._step = self._step, self._step + 1
        budget = self._step_budget(step_costs_ms)
        plan = planning.plan_running(self.ranks, step, budget, self.async_scheduling)
        admission = planning.admit(self.ranks, plan)
        planning.spill(self.ranks, plan, admission)
        schedule = planning.emit(self.ranks, step, plan.tokens)
        if len(schedule):
            self._outstanding.append(step)
        return schedule

    def _step_budget(self, step_costs_ms: Mapping[int, float] | None) -> int:
        """Tokens each rank may run this step (see step_budget.py)."""
        cap = self.sizes.max_num_batched_tokens
        if not self.balance_steps:
            return cap  # the reference system's lockstep steps: every rank its full budget
        ranks = self.ranks
        if step_costs_ms:
            work = work_in_hand(ranks.slots, ranks.waiting.counts(), ranks.counters.load)
            return timed_budget(work, self.sizes.token_buckets, step_costs_ms)
        running = [ranks.slots.running(r) for r in range(self.sizes.dp_ranks)]
        return balanced_budget(ranks.counters.load, running, self.sizes.token_buckets, cap)

    # -- update --------------------------------------------------------------------------------

    def update(
        self,
        schedule: StepSchedule,
        sampled: Mapping[int, int] | np.ndarray,
        new_tokens: list[tuple[str, int, int]] | None = None,
    ) -> list[Output]:
        """Take the tokens sampled for `schedule`; return every Output finished since the last call.

        `sampled`: one token per chunk with `sample`, in schedule order (what the step
        returns), or {seq_id: token}. Non-empty schedules come back once each, in
        order; results for sequences that finished meanwhile are ignored. `new_tokens`,
        when given, gets (request id, token, its index among the step's samples) of
        every token taken, in order (streaming; nothing is built otherwise).
        """
        if not len(schedule):
            return self.take_finished()
        if not self._outstanding or schedule.step != self._outstanding[0]:
            expected = self._outstanding[0] if self._outstanding else "none"
            raise ValueError(
                f"update(): got step {schedule.step}, expected step {expected} "
                "(pass every non-empty schedule to update() once, in order)"
            )
        sample_rows = np.flatnonzero(schedule.sample)
        tokens = self._sampled_tokens(schedule, sample_rows, sampled)
        self._outstanding.popleft()
        sl, g = self.ranks.slots, schedule.slots
        live = sl.seq_id[g] == schedule.seq_ids  # a finished sequence's slot is free, or someone else's
        sl.in_flight[g[live]] -= 1
        got = live[sample_rows]
        gs, tok = g[sample_rows][got], tokens[got]
        sl.tokens[gs, sl.prompt_len[gs] + sl.received[gs]] = tok
        sl.received[gs] += 1
        sl.pending[gs] -= 1
        firsts = gs[sl.received[gs] == 1]
        if len(firsts):  # a few a step: where each one's first token's time went (RequestTimes)
            now = time.monotonic()
            for slot in firsts.tolist():
                sl.seq[slot].first_token_at = sl.seq[slot].first_token_at or now
        if new_tokens is not None:
            ids = [sl.seq[slot].request.id for slot in gs.tolist()]
            new_tokens += zip(ids, tok.tolist(), np.flatnonzero(got).tolist())
        ends = (schedule.starts + schedule.num_tokens)[live]
        sl.written[g[live]] = ends
        self.ranks.prefix.cache_prompt_pages(sl, g[live], ends)
        stopped = (sl.stops[gs] == tok[:, None]).any(axis=1)
        refused = {}
        if sl.constrained[gs].any():  # a completed grammar ends its request as a stop token does
            complete, refused = structured.take(sl, gs, tok)
            stopped |= complete
        done = stopped | (sl.received[gs] >= sl.max_tokens[gs])
        for slot in refused:
            self._finish(sl.seq[slot], "error", refused[slot])
        for slot, stop in zip(gs[done].tolist(), stopped[done].tolist()):
            if slot not in refused:
                self._finish(sl.seq[slot], "stop" if stop else "length")
        return self.take_finished()

    def _sampled_tokens(self, schedule: StepSchedule, sample_rows: np.ndarray, sampled) -> np.ndarray:
        if not isinstance(sampled, Mapping):
            tokens = np.asarray(sampled, np.int64)
            if tokens.shape != sample_rows.shape:
                raise ValueError(f"update(): {len(tokens)} sampled tokens for {len(sample_rows)} samples")
            return tokens
        ids = schedule.seq_ids[sample_rows].tolist()
        missing = [i for i in ids if i not in sampled and i in self._seqs]
        if missing:
            raise ValueError(f"update(): no sampled token for sequences {missing}")
        return np.array([int(sampled.get(i, 0)) for i in ids], np.int64)

    def _finish(self, seq: Seq, reason: FinishReason, error: str | None = None) -> None:
        self.ranks.finish(seq)
        del self._seqs[seq.id], self._by_request[seq.request.id]
        seq.status = Status.FINISHED
        request = seq.request
        self._finished.append(
            Output(request.id, request.prompt_token_ids, seq.outputs, reason, error=error, times=seq.times)
        )
