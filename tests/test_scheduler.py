"""DPScheduler: continuous batching, chunked prefill, preemption, spill-over, async scheduling.

Most tests drive the scheduler with a tiny fake engine: a "model" whose KV cache
holds token ids in rank-local pages, read back through each chunk's block table,
and whose next token is a hash of the whole context read back that way. A
wrong block table, a page owned by two sequences or a wrong recompute after a
preemption changes the tokens, so comparing with a plain reference generation
checks all of them at once.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardspec.runtime.request import Request
from shardspec.runtime.routing import POLICIES
from shardspec.runtime.schedule import FROM_PREVIOUS_STEP, StepSchedule
from shardspec.runtime.scheduler import DPScheduler
from shardspec.sizes import RuntimeSizes, pages_for

VOCAB = 16  # small, so that EOS and stop tokens come up often
EOS = 0


def sizes(dp_ranks=1, page_size=4, pages_per_rank=64, max_model_len=64, max_num_seqs=4, max_num_batched_tokens=8):
    return RuntimeSizes(dp_ranks, page_size, pages_per_rank, max_model_len, max_num_seqs, max_num_batched_tokens)


def req(rid, prompt, max_tokens=16, **kw):
    prompt = tuple(range(1, prompt + 1)) if isinstance(prompt, int) else tuple(prompt)
    return Request(str(rid), prompt, max_tokens=max_tokens, **kw)


def next_token(context: np.ndarray) -> int:
    """The fake model: a deterministic function of every token before the sample."""
    weights = np.arange(len(context)) % 7 + 1
    return int((int((context * weights).sum()) * 2654435761 + len(context)) % 1_000_003 % VOCAB)


def reference(request: Request, eos=EOS) -> tuple[tuple[int, ...], str]:
    """What serving `request` alone must produce: output tokens and finish reason."""
    tokens, out = list(request.prompt_token_ids), []
    stop = set(request.stop_token_ids) | (set() if request.ignore_eos or eos is None else {eos})
    while True:
        out.append(next_token(np.array(tokens)))
        tokens.append(out[-1])
        if out[-1] in stop:
            return tuple(out), "stop"
        if len(out) == request.max_tokens:
            return tuple(out), "length"


class FakeModel:
    def __init__(self, sz: RuntimeSizes):
        self.sz = sz
        self.kv = np.full((sz.dp_ranks, sz.pages_per_rank, sz.page_size), -7, np.int64)
        self.previous: dict[int, int] = {}  # the last step's samples (fill FROM_PREVIOUS_STEP)

    def run(self, schedule) -> dict[int, int]:
        ps, out = self.sz.page_size, {}
        for c in schedule.chunks:
            tokens = np.asarray(c.token_ids, np.int64).copy()
            unknown = tokens == FROM_PREVIOUS_STEP
            if unknown.any():
                assert c.num_tokens == 1
                tokens[unknown] = self.previous[c.seq_id]
            end = c.start_pos + c.num_tokens
            assert len(c.block_table) == pages_for(end, ps)
            pos = np.arange(c.start_pos, end)
            self.kv[c.rank, c.block_table[pos // ps], pos % ps] = tokens
            if c.sample:
                pos = np.arange(end)
                out[c.seq_id] = next_token(self.kv[c.rank, c.block_table[pos // ps], pos % ps])
        self.previous = out
        return out


def check_step(schedule, sz: RuntimeSizes, async_scheduling: bool) -> None:
    ranks = [c.rank for c in schedule.chunks]
    assert ranks == sorted(ranks)
    assert len({c.seq_id for c in schedule.chunks}) == len(schedule.chunks)
    assert (schedule.tokens_per_rank(sz.dp_ranks) <= sz.max_num_batched_tokens).all()
    for r in range(sz.dp_ranks):
        mine = [c for c in schedule.chunks if c.rank == r]
        assert len(mine) <= sz.max_num_seqs
        # Prefix caching shares pages, read-only: the pages a chunk writes are in no other
        # chunk's block table.
        for c in mine:
            written = set(c.block_table[np.arange(c.start_pos, c.start_pos + c.num_tokens) // sz.page_size].tolist())
            others = {p for o in mine if o is not c for p in o.block_table.tolist()}
            assert not written & others, "a page written while another sequence holds it"
    for c in schedule.chunks:
        assert c.num_tokens >= 1 and c.token_ids.dtype == np.int32
        if (c.token_ids == FROM_PREVIOUS_STEP).any():
            assert async_scheduling and c.num_tokens == 1 and c.sample


def serve(
    sched: DPScheduler, arrivals: dict[int, list[Request]], aborts=None, max_steps=2000, failures=None, step_costs=None
):
    """A fake engine loop (sync, or async: schedule t+1 before update t). Returns
    {request id: Output}, the ids aborted while unfinished, and the schedules.

    `failures`: {step: "fail" | "lose_kv"}: that step raises before it runs (its requests
    fail), and with "lose_kv" the KV cache goes with it, as the engine handles both.
    `step_costs`: the {bucket: ms} table each schedule() is given.
    """
    model, aborts, failures = FakeModel(sched.sizes), aborts or {}, failures or {}
    outputs, aborted, schedules, in_flight = {}, set(), [], None
    last_arrival = max([*arrivals, *failures], default=0)
    for step in range(max_steps):
        for r in arrivals.get(step, []):
            sched.add_request(r)
        for rid in aborts.get(step, []):
            if sched.abort(rid):
                aborted.add(rid)
        if step > last_arrival and not sched.has_unfinished() and in_flight is None:
            break
        schedule = sched.schedule(step_costs)
        check_step(schedule, sched.sizes, sched.async_scheduling)
        schedules.append(schedule)
        failed = step in failures and len(schedule)
        if failed:
            sched.fail(schedule, "injected")
        launched = (schedule, model.run(schedule)) if not failed and len(schedule) else None
        if sched.async_scheduling:
            done = sched.update(*in_flight) if in_flight else sched.take_finished()
            in_flight = launched
        else:
            done = sched.update(*launched) if launched else sched.take_finished()
        if failed and failures[step] == "lose_kv":
            model.kv[:] = -7  # every page's contents gone: only a recompute gives the right tokens
            sched.kv_lost(in_flight[0] if in_flight else None)
            in_flight = None
            done += sched.take_finished()
        for out in done:
            assert out.id not in outputs, f"{out.id} finished twice"
            outputs[out.id] = out
    else:
        raise AssertionError(f"not done after {max_steps} steps: {sched.stats()}")
    outputs.update((o.id, o) for o in sched.take_finished())
    return outputs, aborted, schedules


def check_outputs(sched, requests, outputs, aborted, eos=EOS):
    assert sorted(outputs) == sorted(r.id for r in requests)
    for r in requests:
        want, reason = reference(r, eos)
        got = outputs[r.id]
        if r.id in aborted:
            assert got.finish_reason == "abort" and want[: len(got.output_token_ids)] == got.output_token_ids
        elif got.finish_reason == "error":  # in a step that failed: what it had is kept
            assert got.error == "injected" and want[: len(got.output_token_ids)] == got.output_token_ids
        else:
            assert (got.output_token_ids, got.finish_reason) == (want, reason)
    stats = sched.stats()
    assert stats["pages_used"] == [0] * sched.sizes.dp_ranks and stats["max_kv_usage"] == 0
    assert stats["running"] == stats["waiting"] == stats["load"] == [0] * sched.sizes.dp_ranks
    for pool in sched.ranks.slots.pools:  # every page back: free, or cached and held by nobody
        assert pool.num_free == pool.num_pages and not pool.refs(np.arange(pool.num_pages)).any()


def chunks_of(schedule):
    return [(c.seq_id, c.token_ids.tolist(), c.start_pos, c.block_table.tolist(), c.sample) for c in schedule.chunks]


# ------------------------------------------------------------------ one rank, exact chunks


def step(sched, sampled=None):
    """One sync step; `sampled` maps seq id -> token (tokens not given are 3)."""
    schedule = sched.schedule()
    sampled = {c.seq_id: 3 for c in schedule.chunks if c.sample} | (sampled or {})
    return schedule, sched.update(schedule, sampled)


def test_chunked_prefill_then_decode_with_exact_chunks():
    sched = DPScheduler(sizes(page_size=4, max_num_batched_tokens=8), eos_token_ids=(EOS,))
    assert sched.add_request(req("a", 20, max_tokens=3)) == 0
    got, outs = [], []
    for tok in (None, None, 5, 6, 7):
        schedule, done = step(sched, {0: tok} if tok else None)
        got.append(chunks_of(schedule) + [schedule.chunks[0].output_index])
        outs += done
    assert got == [
        [(0, list(range(1, 9)), 0, [0, 1], False), 0],
        [(0, list(range(9, 17)), 8, [0, 1, 2, 3], False), 0],
        [(0, list(range(17, 21)), 16, [0, 1, 2, 3, 4], True), 0],
        [(0, [5], 20, [0, 1, 2, 3, 4, 5], True), 1],
        [(0, [6], 21, [0, 1, 2, 3, 4, 5], True), 2],
    ]
    assert [(o.id, o.output_token_ids, o.finish_reason) for o in outs] == [("a", (5, 6, 7), "length")]
    assert not sched.has_unfinished() and sched.stats()["pages_used"] == [0]


def test_block_table_grows_one_page_at_a_time():
    sched = DPScheduler(sizes(page_size=2))
    sched.add_request(req("a", 3, max_tokens=6, ignore_eos=True))
    lengths = []
    while sched.has_unfinished():
        schedule, _ = step(sched)
        lengths.append([len(c.block_table) for c in schedule.chunks])
    # positions computed: 3, 4, 5, 6, 7, 8 -> pages 2, 2, 3, 3, 4, 4
    assert lengths == [[2], [2], [3], [3], [4], [4]]


def test_decodes_first_then_prefill_chunks_then_admission_in_admission_order():
    sched = DPScheduler(sizes(max_num_seqs=3, max_num_batched_tokens=8))
    for rid in "ab":
        sched.add_request(req(rid, 2, ignore_eos=True))
    first, _ = step(sched)
    assert [(c.seq_id, c.num_tokens) for c in first.chunks] == [(0, 2), (1, 2)]
    sched.add_request(req("c", 20, ignore_eos=True))
    sched.add_request(req("d", 20, ignore_eos=True))
    sched.add_request(req("e", 2, ignore_eos=True))
    second, _ = step(sched)
    # 2 decodes, then c's first chunk takes the 6 tokens left; d and e wait (budget, then seats).
    assert [(c.seq_id, c.num_tokens, c.sample) for c in second.chunks] == [(0, 1, True), (1, 1, True), (2, 6, False)]
    third, _ = step(sched)
    assert [(c.seq_id, c.num_tokens) for c in third.chunks] == [(0, 1), (1, 1), (2, 6)]
    assert sched.stats()["running"] == [3] and sched.stats()["waiting"] == [2]


def test_admission_stops_at_max_num_seqs_and_at_the_token_budget():
    sched = DPScheduler(sizes(max_num_seqs=2, max_num_batched_tokens=100))
    for i in range(4):
        sched.add_request(req(i, 3))
    assert [c.seq_id for c in sched.schedule().chunks] == [0, 1]
    sched = DPScheduler(sizes(max_num_seqs=4, max_num_batched_tokens=8))
    for i in range(4):
        sched.add_request(req(i, 3))
    assert [(c.seq_id, c.num_tokens) for c in sched.schedule().chunks] == [(0, 3), (1, 3), (2, 2)]


def test_admission_waits_for_pages_for_its_first_chunk():
    sched = DPScheduler(sizes(page_size=4, pages_per_rank=4, max_model_len=16, max_num_batched_tokens=16))
    sched.add_request(req("a", 9, max_tokens=4))
    sched.add_request(req("b", 5, max_tokens=4))
    schedule, _ = step(sched)
    assert [c.seq_id for c in schedule.chunks] == [0]  # a takes 3 pages; b needs 2 of the 1 left
    assert sched.stats()["waiting"] == [1] and sched.stats()["max_kv_usage"] == 0.75


# ------------------------------------------------------------------ finishing


@pytest.mark.parametrize(
    "request_kw, samples, want",
    [
        ({}, [4, EOS, 5], ((4, EOS), "stop")),  # EOS ends it and is in the output, like vLLM
        ({"ignore_eos": True}, [4, EOS, 5], ((4, EOS, 5), "length")),
        ({"stop_token_ids": (5, 6)}, [4, 6, 2], ((4, 6), "stop")),
        ({"max_tokens": 2}, [4, 6, 2], ((4, 6), "length")),
        ({"max_tokens": 2}, [4, EOS], ((4, EOS), "stop")),  # a stop token on the last allowed token is a stop
    ],
)
def test_finish_reasons(request_kw, samples, want):
    sched = DPScheduler(sizes(), eos_token_ids=(EOS,))
    sched.add_request(req("a", 3, **{"max_tokens": 3} | request_kw))
    outs = []
    for tok in samples:
        outs += step(sched, {0: tok})[1]
        if outs:
            break
    assert [(o.output_token_ids, o.finish_reason) for o in outs] == [want]
    assert outs[0].prompt_token_ids == (1, 2, 3) and not sched.has_unfinished()


def test_without_an_eos_token_only_stop_ids_and_length_finish():
    sched = DPScheduler(sizes(), eos_token_ids=())
    sched.add_request(req("a", 3, max_tokens=2))
    assert step(sched, {0: EOS})[1] == [] and step(sched, {0: EOS})[1][0].finish_reason == "length"


def test_abort_a_waiting_and_a_running_request():
    sched = DPScheduler(sizes(max_num_seqs=1), eos_token_ids=(EOS,))
    sched.add_request(req("run", 3))
    sched.add_request(req("wait", 3))
    step(sched, {0: 4})
    step(sched, {0: 5})
    assert sched.abort("wait") and sched.abort("run")
    assert not sched.abort("run") and not sched.abort("never-added")
    assert sched.stats()["pages_used"] == [0]
    assert sched.has_unfinished()  # until their outputs are taken
    outs = sched.take_finished()
    assert not sched.has_unfinished()
    assert [(o.id, o.output_token_ids, o.finish_reason) for o in outs] == [
        ("wait", (), "abort"),
        ("run", (4, 5), "abort"),
    ]
    assert sched.take_finished() == [] and sched.schedule().chunks == ()


def test_an_abort_output_comes_with_the_next_update():
    sched = DPScheduler(sizes())
    sched.add_request(req("a", 3))
    sched.add_request(req("b", 3))
    schedule = sched.schedule()
    sched.abort("b")
    assert [o.id for o in sched.update(schedule, {0: 1, 1: 1})] == ["b"]  # b's sample is ignored


# ------------------------------------------------------------------ preemption and spill-over


def test_preemption_recomputes_the_newest_sequence_and_keeps_its_tokens():
    # 6 pages of 2 tokens: each request needs up to 5 pages, both at once do not fit. 12 seats:
    # a seat's share of the pages is 1 token, so admission lets both in (see test_admission_*).
    sz = sizes(page_size=2, pages_per_rank=6, max_model_len=12, max_num_seqs=12, max_num_batched_tokens=16)
    sched = DPScheduler(sz, eos_token_ids=(), prefix_caching=False)  # with it, see test_prefix_cache.py
    requests = [req("old", 4, max_tokens=6), req("new", [5, 6, 7, 1], max_tokens=6)]
    outputs, aborted, schedules = serve(sched, {0: requests})
    check_outputs(sched, requests, outputs, aborted, eos=None)
    assert sched.stats()["preemptions"] >= 1
    # The first preemption hit seq 1 ("new"), which later restarts from position 0
    # with its prompt plus what it had generated, recomputed in one chunk.
    restart = next(c for s in schedules[1:] for c in s.chunks if c.seq_id == 1 and c.start_pos == 0)
    generated = list(outputs["new"].output_token_ids[: restart.num_tokens - 4])
    assert restart.token_ids.tolist() == [5, 6, 7, 1] + generated and len(generated) >= 1
    assert restart.sample and restart.output_index == len(generated)
    assert all(c.start_pos > 0 for s in schedules[1:] for c in s.chunks if c.seq_id == 0)  # "old" never restarts
    assert 0 < sched.stats()["recomputed_tokens"][0] <= restart.num_tokens  # what it had computed, again


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_admission_keeps_room_for_what_it_admitted_to_grow_into(async_scheduling):
    """16 pages of 4 tokens, 4 seats (a seat's share: 16 tokens). Twelve requests of 8 + 8
    tokens need 4 pages each: 4 run at once, the rest wait, and nobody is preempted."""
    sz = sizes(pages_per_rank=16, max_num_seqs=4, max_num_batched_tokens=64)
    sched = DPScheduler(sz, eos_token_ids=(), async_scheduling=async_scheduling, prefix_caching=False)
    requests = [req(i, [i + 1] * 8, max_tokens=8) for i in range(12)]
    outputs, aborted, schedules = serve(sched, {0: requests})
    check_outputs(sched, requests, outputs, aborted, eos=None)
    assert sched.stats()["preemptions"] == 0 and sched.stats()["recomputed_tokens"] == [0]
    assert max(len({c.seq_id for c in s.chunks}) for s in schedules) == 4
    # Outputs longer than a seat's share are not reserved in full: they may still preempt.
    sched = DPScheduler(sz, eos_token_ids=(), async_scheduling=async_scheduling, prefix_caching=False)
    longer = [req(i, [i + 1] * 8, max_tokens=40) for i in range(6)]
    outputs, aborted, _ = serve(sched, {0: longer})
    check_outputs(sched, longer, outputs, aborted, eos=None)
    assert sched.stats()["preemptions"] >= 1


def test_a_waiting_request_spills_to_a_rank_with_a_free_seat():
    sz = sizes(dp_ranks=2, max_num_seqs=1)
    sched = DPScheduler(sz, routing="round_robin")
    sched.add_request(req("long", 3, max_tokens=10, ignore_eos=True))  # rank 0
    sched.add_request(req("short", 3, max_tokens=1))  # rank 1
    sched.add_request(req("spill", 3, max_tokens=1))  # rank 0, whose only seat is taken
    schedule, done = step(sched)
    assert [(c.seq_id, c.rank) for c in schedule.chunks] == [(0, 0), (1, 1)] and done[0].id == "short"
    schedule, _ = step(sched)
    assert [(c.seq_id, c.rank) for c in schedule.chunks] == [(0, 0), (2, 1)]
    assert sched.stats()["spills"] == 1


def test_a_waiting_request_spills_to_a_rank_with_free_pages():
    sz = sizes(dp_ranks=2, page_size=4, pages_per_rank=3, max_model_len=12, max_num_batched_tokens=16)
    sched = DPScheduler(sz, routing="round_robin")
    sched.add_request(req("a", 9, max_tokens=3, ignore_eos=True))  # rank 0, 3 pages
    sched.add_request(req("b", 1, max_tokens=1))  # rank 1
    sched.add_request(req("c", 4, max_tokens=1))  # rank 0: no page left there
    schedule, _ = step(sched)
    assert [(c.seq_id, c.rank) for c in schedule.chunks] == [(0, 0), (1, 1), (2, 1)]
    assert sched.stats()["spills"] == 1


def test_kv_usage_is_the_max_over_ranks():
    sz = sizes(dp_ranks=2, page_size=4, pages_per_rank=4, max_num_batched_tokens=16)
    sched = DPScheduler(sz, routing="round_robin")
    sched.add_request(req("a", 12, max_tokens=1))
    sched.add_request(req("b", 2, max_tokens=1))
    sched.schedule()
    assert sched.stats()["pages_used"] == [3, 1] and sched.stats()["max_kv_usage"] == 0.75


# ------------------------------------------------------------------ routing through the scheduler


@pytest.mark.parametrize(
    "routing, ranks",
    [
        ("round_robin", [0, 1, 0, 1]),
        ("least_tokens", [0, 1, 1, 1]),  # rank 0 holds 11 tokens: b, c, d (12 tokens) all go to rank 1
        ("balanced", [0, 1, 0, 1]),
    ],
)
def test_routing_policies_assign_exact_ranks(routing, ranks):
    # a (10 tokens) runs its prefill on rank 0 first, so rank 0's load drops to 1
    # while its token count grows; then b, c, d arrive.
    sched = DPScheduler(sizes(dp_ranks=2, max_num_batched_tokens=16), routing=routing)
    sched.add_request(req("a", 10, ignore_eos=True))
    step(sched)
    for rid, n in (("b", 4), ("c", 4), ("d", 4)):
        sched.add_request(req(rid, n, ignore_eos=True))
    schedule = sched.schedule()
    assert [c.rank for c in sorted(schedule.chunks, key=lambda c: c.seq_id)] == ranks


def test_routing_is_deterministic():
    def run():
        sched = DPScheduler(sizes(dp_ranks=3), routing="balanced")
        for i in range(12):
            sched.add_request(req(i, 1 + (i * 7) % 9))
        return [(c.seq_id, c.rank) for c in sched.schedule().chunks]

    assert run() == run()


# ------------------------------------------------------------------ async scheduling


def test_async_schedules_the_next_decode_before_the_sample_is_known():
    sched = DPScheduler(sizes(), eos_token_ids=(EOS,), async_scheduling=True)
    sched.add_request(req("a", 3, max_tokens=3))
    sched.add_request(req("b", 3, max_tokens=1))
    s0 = sched.schedule()
    s1 = sched.schedule()  # before update(s0)
    assert [(c.seq_id, c.token_ids.tolist(), c.start_pos, c.sample, c.output_index) for c in s1.chunks] == [
        (0, [FROM_PREVIOUS_STEP], 3, True, 1)
    ]  # b may produce only 1 token: not scheduled again
    assert not s1.chunks[0].token_ids.flags.writeable
    assert [o.id for o in sched.update(s0, {0: 4, 1: 4})] == ["b"]
    s2 = sched.schedule()
    assert [(c.token_ids.tolist(), c.start_pos, c.output_index) for c in s2.chunks] == [([FROM_PREVIOUS_STEP], 4, 2)]
    s3 = sched.schedule()  # a third sample would exceed max_tokens: nothing to do
    assert s3.chunks == ()
    assert sched.update(s1, {0: 5}) == []
    outs = sched.update(s2, {0: 6})
    assert [(o.id, o.output_token_ids, o.finish_reason) for o in outs] == [("a", (4, 5, 6), "length")]
    assert sched.stats()["pages_used"] == [0]


def test_async_ignores_results_for_sequences_that_finished_meanwhile():
    sched = DPScheduler(sizes(), eos_token_ids=(EOS,), async_scheduling=True)
    sched.add_request(req("a", 3, max_tokens=5))
    s0 = sched.schedule()
    s1 = sched.schedule()
    assert [o.finish_reason for o in sched.update(s0, {0: EOS})] == ["stop"]
    assert sched.stats()["pages_used"] == [0]
    assert sched.update(s1, {0: 4}) == [] and not sched.has_unfinished()
    assert sched.schedule().chunks == ()


def test_async_only_fills_in_the_previous_steps_sample():
    # 3 pages of 1 token. Step 1: both decodes need a page, only 1 is free and
    # both sequences have work in flight, so the newer one (b) skips the step.
    sched = DPScheduler(sizes(page_size=1, pages_per_rank=3), async_scheduling=True)
    sched.add_request(req("a", 1, max_tokens=3))
    sched.add_request(req("b", 1, max_tokens=3))
    s0, s1 = sched.schedule(), sched.schedule()
    assert [(c.seq_id, c.token_ids.tolist()) for c in s1.chunks] == [(0, [FROM_PREVIOUS_STEP])]
    assert sched.abort("a")  # frees pages for b
    # b's unknown token was sampled in step 0, which the device cannot fill in at step 2
    assert sched.schedule().chunks == () and sched.stats()["preemptions"] == 0
    sched.update(s0, {0: 1, 1: 2})
    sched.update(s1, {0: 3})
    assert [(c.seq_id, c.token_ids.tolist(), c.start_pos) for c in sched.schedule().chunks] == [(1, [2], 1)]


def test_async_preemption_still_gives_exact_outputs():
    sz = sizes(page_size=2, pages_per_rank=6, max_model_len=12, max_num_seqs=12, max_num_batched_tokens=16)
    requests = [req("old", 4, max_tokens=6), req("new", [5, 6, 7, 1], max_tokens=6)]
    sched = DPScheduler(sz, eos_token_ids=(), async_scheduling=True)
    outputs, aborted, _ = serve(sched, {0: requests})
    check_outputs(sched, requests, outputs, aborted, eos=None)
    assert sched.stats()["preemptions"] >= 1


# ------------------------------------------------------------------ contracts


def test_update_wants_each_schedule_once_in_order_with_every_sample():
    sched = DPScheduler(sizes(), async_scheduling=True)
    sched.add_request(req("a", 3))
    s0, s1 = sched.schedule(), sched.schedule()
    with pytest.raises(ValueError, match="got step 1, expected step 0"):
        sched.update(s1, {0: 1})
    with pytest.raises(ValueError, match=r"no sampled token for sequences \[0\]"):
        sched.update(s0, {})
    sched.update(s0, {0: 1})
    with pytest.raises(ValueError, match="got step 0, expected step 1"):
        sched.update(s0, {0: 1})


def test_add_request_rejects_what_can_never_run():
    sched = DPScheduler(sizes(page_size=4, pages_per_rank=2, max_model_len=16))
    with pytest.raises(ValueError, match="empty prompt"):
        sched.add_request(req("a", 0))
    with pytest.raises(ValueError, match="max_tokens=0"):
        sched.add_request(req("a", 2, max_tokens=0))
    # 2 pages of 4 hold 8 tokens, + the last sample never written: 9, below the model's 16
    with pytest.raises(
        ValueError,
        match=r"prompt 10 \+ max_tokens 8 exceeds the 9 tokens one DP rank's KV "
        r"pages hold \(2 pages of 4; the model allows 16: more kv_cache.num_pages, a smaller kv_cache.dtype or "
        r"attention DP hold more\) \(shorten the prompt to under 9 tokens\)",
    ):
        sched.add_request(req("a", 10, max_tokens=8))
    with pytest.raises(ValueError, match=r"prompt 8 \+ max_tokens 2 exceeds .* \(use max_tokens <= 1\)"):
        sched.add_request(req("a", 8, max_tokens=2))
    sched.add_request(req("a", 8, max_tokens=1))
    with pytest.raises(ValueError, match="already running or waiting"):
        sched.add_request(req("a", 1, max_tokens=1))


def test_a_schedule_is_columns_that_later_steps_never_change():
    sched = DPScheduler(sizes(page_size=2, max_num_batched_tokens=4))
    sched.add_request(req("a", 3, max_tokens=4, ignore_eos=True))
    sched.add_request(req("b", 1, max_tokens=4, ignore_eos=True))
    first = sched.schedule()
    chunks = first.chunks
    assert [(c.seq_id, c.start_pos, c.num_tokens, c.sample, c.block_table.tolist()) for c in chunks] == [
        (0, 0, 3, True, [0, 1]),
        (1, 0, 1, True, [2]),
    ]
    rebuilt = StepSchedule.from_chunks(chunks, first.step)
    for name in ("seq_ids", "ranks", "starts", "num_tokens", "sample", "token_ids", "n_pages", "output_index"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(first, name), err_msg=name)
    sched.update(first, {0: 5, 1: 6})
    for _ in range(3):  # more steps grow both block tables
        s = sched.schedule()
        sched.update(s, {c.seq_id: 7 for c in s.chunks if c.sample})
    assert [c.block_table.tolist() for c in first.chunks] == [[0, 1], [2]]  # the step as it was planned
    assert first.token_ids.tolist() == [1, 2, 3, 1]


# ------------------------------------------------------------------ the property


@st.composite
def workloads(draw):
    page_size = draw(st.sampled_from([1, 2, 4]))
    max_model_len = 16
    sz = sizes(
        dp_ranks=draw(st.integers(1, 3)),
        page_size=page_size,
        # from one longest request's worth of pages (forces preemption) to plenty
        pages_per_rank=draw(
            st.integers(pages_for(max_model_len - 1, page_size), 2 * pages_for(max_model_len, page_size))
        ),
        max_model_len=max_model_len,
        max_num_seqs=draw(st.integers(1, 4)),
        max_num_batched_tokens=draw(st.integers(1, 12)),
    )
    requests, arrivals = [], {}
    # Prompts start with one of a few shared prefixes (a system prompt, one prompt's
    # samples), so that prefix caching shares pages, then go their own way.
    token = st.integers(0, VOCAB - 1)
    prefixes = draw(st.lists(st.lists(token, min_size=1, max_size=12), min_size=1, max_size=3))
    for i in range(draw(st.integers(1, 12))):
        n = draw(st.integers(1, 12))
        stop = tuple(draw(st.sets(st.integers(0, VOCAB - 1), max_size=2)))
        shared = draw(st.sampled_from(prefixes))[: draw(st.integers(0, n))]
        r = req(
            i,
            shared + [draw(token) for _ in range(n - len(shared))],
            max_tokens=draw(st.integers(1, 16 - n)),
            ignore_eos=draw(st.booleans()),
            stop_token_ids=stop,
        )
        requests.append(r)
        arrivals.setdefault(draw(st.integers(0, 8)), []).append(r)
    aborts = {}
    for _ in range(draw(st.integers(0, 3))):
        aborts.setdefault(draw(st.integers(0, 30)), []).append(str(draw(st.integers(0, len(requests) - 1))))
    return sz, requests, arrivals, aborts


STEP_COSTS = {  # none (padding-balanced steps), or a table: all fixed cost, or all per token
    "none": None,
    "fixed": lambda buckets: {b: 10.0 for b in buckets},
    "per token": lambda buckets: {b: 0.01 * b for b in buckets},
}


@settings(max_examples=300, deadline=None)
@given(workloads(), st.booleans(), st.sampled_from(POLICIES), st.booleans(), st.sampled_from(sorted(STEP_COSTS)))
def test_every_request_finishes_once_with_the_right_tokens_and_all_pages_return(
    workload, async_scheduling, routing, prefix_caching, step_costs
):
    sz, requests, arrivals, aborts = workload
    sched = DPScheduler(
        sz, routing=routing, eos_token_ids=(EOS,), async_scheduling=async_scheduling, prefix_caching=prefix_caching
    )
    costs = STEP_COSTS[step_costs](sz.token_buckets) if STEP_COSTS[step_costs] else None
    outputs, aborted, _ = serve(sched, arrivals, aborts, step_costs=costs)
    check_outputs(sched, requests, outputs, aborted)


@settings(max_examples=200, deadline=None)
@given(
    workloads(),
    st.booleans(),
    st.dictionaries(st.integers(0, 30), st.sampled_from(["fail", "lose_kv"]), min_size=1, max_size=3),
)
def test_failing_steps_fail_only_their_requests_and_a_lost_cache_is_recomputed(workload, async_scheduling, failures):
    sz, requests, arrivals, aborts = workload
    sched = DPScheduler(sz, eos_token_ids=(EOS,), async_scheduling=async_scheduling)
    outputs, aborted, _ = serve(sched, arrivals, aborts, failures=failures)
    check_outputs(sched, requests, outputs, aborted)
