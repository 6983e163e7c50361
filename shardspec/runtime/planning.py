"""One step's plan, phase by phase; each phase takes the ranks' state (`ranks.py`) and what
the phase before returned, and returns its own result.

    plan_running  running sequences: decodes first (1 token each), then prefill chunks
                  (chunked prefill: with a budget of 8, a 20-token prompt runs as 8 + 8 + 4),
                  in admission order under the rank's token budget; pages for them,
                  preempting the newest sequences when a rank runs short
    admit         waiting sequences, oldest first, while seats, budget and pages allow, each
                  from its longest cached prefix; one whose next page another sequence is
                  computing waits for it (bounded, see prefix_cache.py) while younger ones go.
                  Pages allow when they hold, beyond the new sequence's prompt, every running
                  sequence's growth: its prompt and up to `sizes.growth_reserve_tokens` more
                  outputs (never past its max_tokens), so admission does not fill the pages
                  that the admitted sequences' decodes then preempt each other for
    spill         a blocked rank's waiting sequences move to a rank that can start them now
                  (running sequences never move: their KV pages live on their rank)
    emit          the plan as a StepSchedule (columns), every planned sequence advanced

The running sequences are handled with array operations over every rank's
slots at once (`slots.py`); only admissions, preemptions and spills, which
happen to few sequences a step, loop in Python. The phases change the ranks'
state in place (slots, pools, queues: copying them each step would cost more
than the step plans) through its events, and never see the scheduler.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..sizes import RuntimeSizes, pages_for
from . import adjustments, structured
from .ranks import Ranks
from .schedule import FROM_PREVIOUS_STEP, StepSchedule
from .sequence import Seq
from .slots import _offsets


class RunningPlan(NamedTuple):
    tokens: np.ndarray  # int64 [slots]: tokens each slot runs this step (0: none); admissions add theirs
    budget_left: list[int]  # per rank: tokens left after the running sequences
    pressed: list[bool]  # per rank: pages ran short (it preempted or dropped work), so it admits nothing


class Admission(NamedTuple):
    budget_left: list[int]  # per rank, after admissions
    blocked: list[bool]  # per rank: its oldest waiting sequence could not start there
    held: list[list[Seq]]  # per rank: sequences off the queue this step, waiting for a prefix
    reserve: list[int]  # per rank: pages its running sequences will still grow into (growth_reserve)


def plan_running(s: Ranks, step: int, budget: int, async_scheduling: bool) -> RunningPlan:
    """Tokens for every running sequence this step, and pages for them."""
    sl, R = s.slots, s.sizes.dp_ranks
    active = sl.seq_id >= 0
    remaining = sl.total - sl.computed
    ready = sl.pending == 0
    if async_scheduling:
        # A decode whose input is a sample not yet received runs only if that sample
        # comes from the previous step (the device fills it in from there) and one
        # more token is allowed after it; never a constrained one (its mask follows from that sample).
        ready |= (
            (sl.pending == 1) & (sl.last_sample_step == step - 1) & (sl.received + 2 <= sl.max_tokens) & ~sl.constrained
        )
    decode = active & (remaining == 1) & ready
    order = sl.in_order()  # by rank, then admission
    tokens = np.zeros(len(sl.seq_id), np.int64)

    dg = order[decode[order]]
    dr = sl.rank_of(dg)
    if len(dg) and budget < sl.sizes.max_num_seqs:  # else every decode fits the budget
        dg = dg[_rank_cumsum(np.ones(len(dg), np.int64), dr, exclusive=True) < budget]
        dr = sl.rank_of(dg)
    tokens[dg] = 1
    left = budget - np.bincount(dr, minlength=R)

    pg = order[(remaining > 1)[order]]
    if len(pg):  # prefill chunks in admission order: each takes what the ones before left
        pr, rem = sl.rank_of(pg), remaining[pg]
        chunk = np.clip(left[pr] - _rank_cumsum(rem, pr, exclusive=True), 0, rem)
        tokens[pg] = chunk
        left -= np.bincount(pr, weights=chunk, minlength=R).astype(np.int64)

    planned = np.flatnonzero(tokens)
    pages = sl.pages_needed(planned, tokens[planned])
    need = np.bincount(sl.rank_of(planned), weights=pages, minlength=R)
    pressed = [int(need[r]) > sl.pools[r].num_free for r in range(R)]
    if any(pressed):
        for r in np.flatnonzero(pressed):
            _make_room(s, int(r), int(need[r]), tokens)
        planned = np.flatnonzero(tokens)
        pages = None
    sl.grow(planned, tokens[planned], pages)
    return RunningPlan(tokens, left.tolist(), pressed)


def _make_room(s: Ranks, rank: int, need: int, tokens: np.ndarray) -> None:
    """Preempt the newest sequences with no work in flight until `need` pages fit (a page
    another sequence shares stays held, so the pool is asked what is free each time)."""
    sl, pool = s.slots, s.slots.pools[rank]
    for g in sl.by_admission(rank)[::-1]:
        if need <= pool.num_free:
            return
        if sl.in_flight[g]:
            continue
        need -= int(sl.pages_needed(np.array([g]), tokens[[g]])[0])
        tokens[g] = 0
        s.preempt(int(g))
    # Async only: every sequence left has work in flight. Skip the newest plans
    # that need pages; they can be preempted once their work lands.
    for g in sl.by_admission(rank)[::-1]:
        if need <= pool.num_free:
            return
        k = int(sl.pages_needed(np.array([g]), tokens[[g]])[0])
        if k:
            tokens[g], need = 0, need - k


def admit(s: Ranks, plan: RunningPlan) -> Admission:
    """Start waiting sequences, oldest first, with their first chunk."""
    R = s.sizes.dp_ranks
    left, blocked, held = list(plan.budget_left), [False] * R, [[] for _ in range(R)]
    reserve = growth_reserve(s)
    for rank in range(R):
        while (seq := s.waiting.front(rank)) is not None:
            if plan.pressed[rank] or not s.slots.has_seat(rank):
                blocked[rank] = True
                break
            if not left[rank]:
                break
            hit = s.prefix.hit(rank, seq)
            if s.prefix.should_wait(rank, seq, len(hit)):  # it could start now, but would compute a page twice
                seq.prefix_waits += 1
                held[rank].append(s.waiting.pop_front(rank))  # back on the queue after spill()
                continue
            if not _fits(s, rank, seq, left[rank], hit, reserve[rank]):
                blocked[rank] = True
                break
            s.waiting.pop_front(rank)
            left[rank] -= _start(s, rank, seq, left[rank], plan.tokens, hit, reserve)
    return Admission(left, blocked, held, reserve)


def spill(s: Ranks, plan: RunningPlan, admission: Admission) -> None:
    """Move waiting sequences of blocked ranks to ranks that can start them now.

    A target needs a free seat, budget left and pages for the first chunk; a
    sequence moved there may start before the target's own waiting ones if
    those need more pages than it does. Then the held sequences queue again."""
    left = list(admission.budget_left)
    for src in range(s.sizes.dp_ranks):
        while admission.blocked[src] and (seq := s.waiting.front(src)) is not None:
            hits = {r: s.prefix.hit(r, seq) for r in range(s.sizes.dp_ranks) if r != src}
            reserve = admission.reserve
            targets = [
                r
                for r, hit in hits.items()
                if not plan.pressed[r]
                and left[r]
                and s.slots.has_seat(r)
                and _fits(s, r, seq, left[r], hit, reserve[r])
            ]
            if not targets:
                break
            dst = s.route(seq, targets)
            s.move(seq, src, dst)
            left[dst] -= _start(s, dst, seq, left[dst], plan.tokens, hits[dst], reserve)  # moving changed no pool
    for rank, seqs in enumerate(admission.held):
        for seq in seqs:
            s.waiting.push(rank, seq)


def growth_reserve(s: Ranks) -> list[int]:
    """Per rank: the pages its running sequences will still need (`future_pages`)."""
    sl = s.slots
    g = np.flatnonzero(sl.seq_id >= 0)
    if not s.sizes.growth_reserve_tokens or not len(g):
        return [0] * s.sizes.dp_ranks
    need = future_pages(s.sizes, sl.prompt_len[g], sl.max_tokens[g], sl.total[g]) - sl.n_pages[g]
    return np.bincount(sl.rank_of(g), weights=np.maximum(need, 0), minlength=s.sizes.dp_ranks).astype(int).tolist()


def future_pages(sizes: RuntimeSizes, prompt_len, max_tokens, total) -> np.ndarray:
    """Pages a sequence (or an array of them) holds once its prompt and up to
    `growth_reserve_tokens` more outputs are written (its last sample never is)."""
    final = prompt_len + max_tokens - 1
    return pages_for(np.minimum(final, total + sizes.growth_reserve_tokens), sizes.page_size)


def _fits(s: Ranks, rank: int, seq: Seq, budget: int, hit: list[int], reserve: int) -> bool:
    """Whether `rank` has the pages for `seq` to grow (`future_pages`; with no growth reserve,
    its first chunk under `budget`) from the cached pages `hit` (an idle one taken is a free
    one fewer), beside its running sequences' `reserve`."""
    pool, sizes = s.slots.pools[rank], s.sizes
    if sizes.growth_reserve_tokens:
        own = int(future_pages(sizes, seq.prompt_len, seq.request.max_tokens, seq.total))
    else:
        cached = len(hit) * sizes.page_size
        own = pages_for(cached + min(seq.total - cached, budget), sizes.page_size)
    return own - len(hit) + pool.idle_count(hit) + reserve <= pool.num_free


def _start(s: Ranks, rank: int, seq: Seq, budget: int, tokens: np.ndarray, hit: list[int], reserve: list[int]) -> int:
    """Admit a waiting sequence (already off its queue) with its first chunk, planned in
    `tokens`; that chunk's size. Its growth beyond that chunk joins `reserve`."""
    g, n = s.start(rank, seq, budget, hit)
    tokens[g] = n
    sl = s.slots
    if s.sizes.growth_reserve_tokens:
        grown = future_pages(s.sizes, sl.prompt_len[g], sl.max_tokens[g], sl.total[g])
        reserve[rank] += max(0, int(grown) - int(sl.n_pages[g]))
    return n


def emit(s: Ranks, step: int, tokens: np.ndarray) -> StepSchedule:
    """The plan as chunks grouped by rank, in admission order; advance every planned sequence."""
    sl = s.slots
    order = sl.in_order()
    g = order[tokens[order] > 0]
    n, start = tokens[g], sl.computed[g]
    end = start + n
    sample = end == sl.total[g]
    # Each chunk's token ids: known ones from the slot's tokens; the previous step's
    # sample, not received yet, as FROM_PREVIOUS_STEP (async decodes only).
    if (n == 1).all():  # decodes only: one token a chunk
        rows, pos = g, start
    else:
        rows, pos = np.repeat(g, n), np.repeat(start, n) + _offsets(n)
    known = sl.prompt_len[rows] + sl.received[rows]
    token_ids = np.where(pos < known, sl.tokens[rows, pos], FROM_PREVIOUS_STEP).astype(np.int32)
    n_pages = sl.n_pages[g]
    width = int(n_pages.max()) if len(g) else 0
    outputs = sl.total[g] - sl.prompt_len[g]  # tokens each has generated, received or not
    ranks = sl.rank_of(g)
    schedule = StepSchedule(
        step=step,
        seq_ids=sl.seq_id[g],
        ranks=ranks,
        starts=start,
        num_tokens=n,
        sample=sample,
        token_ids=token_ids,
        block_tables=np.take(sl.table[:, :width], g, axis=0),
        n_pages=n_pages,
        temperature=sl.temperature[g],
        top_k=sl.top_k[g],
        top_p=sl.top_p[g],
        seed=sl.seed[g],
        output_index=outputs.astype(np.int32),
        logprobs=np.where(sample, sl.logprobs[g], -1).astype(np.int32),
        slots=g,
        adjustments=adjustments.for_step(sl, g, sample, outputs),
        prompt_targets=_prompt_targets(sl, rows, pos) if (sl.prompt_logprobs[g] >= 0).any() else None,
        masks=structured.masks_for_step(sl, g, sample),
    )
    sl.computed[g] = end
    sl.in_flight[g] += 1
    sampled = g[sample]
    sl.pending[sampled] += 1
    sl.total[sampled] += 1
    sl.last_sample_step[sampled] = step
    R = s.sizes.dp_ranks
    s.counters.stepped(
        np.bincount(ranks, weights=n, minlength=R).astype(np.int64).tolist(),
        np.bincount(ranks[sample], minlength=R).tolist(),
    )
    return schedule


def _prompt_targets(sl, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per token (slot `rows`, position `pos`): the prompt token after it, whose logprob its
    logits give, where its sequence wants its prompt's logprobs; else -1."""
    after = pos + 1
    wanted = (sl.prompt_logprobs[rows] >= 0) & (after < sl.prompt_len[rows])
    return np.where(wanted, sl.tokens[rows, np.minimum(after, sl.tokens.shape[1] - 1)], -1).astype(np.int32)


def _rank_cumsum(values: np.ndarray, ranks: np.ndarray, *, exclusive: bool) -> np.ndarray:
    """Cumulative sum of `values` within each rank (`ranks` sorted ascending)."""
    total = np.cumsum(values)
    starts = np.searchsorted(ranks, ranks)  # where each element's rank begins
    before = np.concatenate([[0], total])[starts]
    inclusive = total - before
    return inclusive - values if exclusive else inclusive
