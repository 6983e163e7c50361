"""Prefix caching: shared pages in the pool, hits at admission, the in-batch wait, routing.

The scheduler is driven by the fake model of test_scheduler.py, whose KV cache
holds token ids: a shared page with the wrong contents changes the tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_scheduler import FakeModel, check_outputs, reference, req, serve, sizes, step

from shardspec.runtime import prefix_cache
from shardspec.runtime.kv_pages import PagePool
from shardspec.runtime.routing import RankCounters, Router
from shardspec.runtime.scheduler import DPScheduler

# ------------------------------------------------------------------ the pool


def test_a_released_cached_page_stays_until_an_allocation_needs_it_lru_first():
    pool = PagePool(4)
    a = pool.allocate(2)  # [0, 1]
    assert pool.register(int(a[0]), b"k0") and pool.register(int(a[1]), b"k1")
    pool.free(a)
    assert (pool.num_free, pool.num_used, pool.num_cached) == (4, 0, 2)
    assert pool.lookup([b"k0", b"k1", b"k2"]) == [0, 1]
    b = pool.allocate(3)  # the free pages 2 and 3 first, then the least recently released: the tail, page 1
    assert b.tolist() == [2, 3, 1]
    assert pool.lookup([b"k0", b"k1"]) == [0]  # the prefix outlives its tail


def test_a_shared_page_goes_back_when_its_last_holder_lets_go():
    pool = PagePool(2)
    (p,) = pool.allocate(1)
    pool.register(int(p), b"k")
    pool.acquire([int(p)])  # a second holder: a prefix hit
    pool.free([p])
    assert pool.refs([p]).tolist() == [1] and pool.num_used == 1
    pool.free([p])
    assert pool.num_used == 0 and pool.lookup([b"k"]) == [int(p)]
    with pytest.raises(RuntimeError, match="not in use"):
        pool.free([p])


def test_the_same_prefix_registered_twice_keeps_the_first_page():
    pool = PagePool(2)
    a, b = pool.allocate(2)
    assert pool.register(int(a), b"k") and not pool.register(int(b), b"k")
    pool.free([a, b])
    assert pool.lookup([b"k"]) == [int(a)] and pool.num_cached == 1


def test_forget_cache_frees_every_idle_page():
    pool = PagePool(3)
    pages = pool.allocate(3)
    for i, p in enumerate(pages.tolist()):
        pool.register(p, bytes([i]))
    pool.free(pages)
    pool.forget_cache()
    assert pool.num_cached == 0 and pool.num_free == 3 and pool.lookup([b"\0"]) == []


def test_page_keys_are_a_hash_chain_of_full_pages():
    a = prefix_cache.extend_keys([], np.array([1, 2, 3, 4, 5]), 2)
    b = prefix_cache.extend_keys([], np.array([1, 2, 3, 9]), 2)
    c = prefix_cache.extend_keys([], np.array([7, 7, 3, 4]), 2)
    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]
    assert a[1] != c[1]  # the same page after another prefix is another key
    assert prefix_cache.shareable_pages(4, 2) == 1 and prefix_cache.shareable_pages(5, 2) == 2


# ------------------------------------------------------------------ hits in the scheduler


def run_all(sched, arrivals, **kw):
    requests = [r for rs in arrivals.values() for r in rs]
    outputs, aborted, schedules = serve(sched, arrivals, **kw)
    check_outputs(sched, requests, outputs, aborted, eos=None)
    return outputs, schedules


def first_chunk(schedules, seq_id):
    return next(c for s in schedules for c in s.chunks if c.seq_id == seq_id)


def test_a_repeated_prompt_starts_from_the_cached_pages_and_computes_its_last_token():
    sched = DPScheduler(sizes(page_size=4), eos_token_ids=())
    prompt = list(range(1, 13))  # 3 full pages: 2 are shared, the last token is computed
    _, schedules = run_all(sched, {0: [req("a", prompt, max_tokens=3)], 6: [req("b", prompt, max_tokens=3)]})
    a, b = first_chunk(schedules, 0), first_chunk(schedules, 1)
    assert b.start_pos == 8 and b.token_ids.tolist() == prompt[8:]
    assert b.block_table[:2].tolist() == a.block_table[:2].tolist()
    stats = sched.stats()
    assert stats["cached_tokens"] == [8] and stats["prefill_tokens"] == [12 + 4]


def test_outputs_of_a_first_request_are_cached_for_a_conversation_that_resends_them():
    sched = DPScheduler(sizes(page_size=2), eos_token_ids=())
    turn1 = req("turn1", [1, 2, 3, 4], max_tokens=4)
    turn2 = req("turn2", [1, 2, 3, 4, *reference(turn1, None)[0], 5, 6], max_tokens=2)
    _, schedules = run_all(sched, {0: [turn1], 10: [turn2]})
    # Turn 1's prompt and its first 3 outputs: the 4th output was sampled, never written.
    assert first_chunk(schedules, 1).start_pos == 6


def test_without_prefix_caching_nothing_is_shared():
    sched = DPScheduler(sizes(page_size=4), eos_token_ids=(), prefix_caching=False)
    prompt = list(range(1, 13))
    _, schedules = run_all(sched, {0: [req("a", prompt, max_tokens=3)], 6: [req("b", prompt, max_tokens=3)]})
    assert first_chunk(schedules, 1).start_pos == 0 and sched.stats()["cached_tokens"] == [0]


def test_requests_arriving_together_compute_a_shared_prefix_once():
    # A budget of 8 a step: "a" computes the 12-token prefix over 2 steps while "b" waits.
    sz = sizes(page_size=4, max_num_batched_tokens=8)
    sched = DPScheduler(sz, eos_token_ids=(), routing="cache_first")
    shared = list(range(1, 13))
    _, schedules = run_all(sched, {0: [req("a", shared + [13], max_tokens=2), req("b", shared + [14], max_tokens=2)]})
    b = first_chunk(schedules, 1)
    assert b.start_pos == 12 and sched.stats()["prefill_tokens"] == [13 + 1]


def test_the_wait_for_a_shared_prefix_is_bounded(monkeypatch):
    sz = sizes(page_size=4, max_num_batched_tokens=8)
    sched = DPScheduler(sz, eos_token_ids=(), routing="cache_first")
    shared = list(range(1, 13))
    sched.add_request(req("a", shared + [13], max_tokens=2))
    sched.add_request(req("b", shared + [14], max_tokens=2))
    step(sched)
    schedule = sched.schedule()  # "a" computes page 2 and leaves budget: "b" waits for that page
    b = sched.sequence("b")
    assert [c.seq_id for c in schedule.chunks] == [0] and b.prefix_waits == 1
    assert sched.ranks.prefix.should_wait(0, b, 2)
    monkeypatch.setattr(prefix_cache, "PREFIX_WAIT_STEPS", 1)
    assert not sched.ranks.prefix.should_wait(0, b, 2)  # it has waited its steps: it computes the page itself


def test_a_preempted_sequence_resumes_from_its_own_cached_pages():
    sz = sizes(page_size=2, pages_per_rank=6, max_model_len=12, max_num_seqs=12, max_num_batched_tokens=16)
    sched = DPScheduler(sz, eos_token_ids=())
    requests = [req("old", 4, max_tokens=6), req("new", [5, 6, 7, 1], max_tokens=6)]
    outputs, schedules = run_all(sched, {0: requests})
    assert sched.stats()["preemptions"] >= 1
    restarts = [
        c for s in schedules[1:] for c in s.chunks if c.seq_id == 1 and c.start_pos % 2 == 0 and c.num_tokens > 1
    ]
    assert restarts and restarts[0].start_pos > 0


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("routing", ["balanced", "least_load", "cache_first", "least_tokens", "round_robin"])
def test_outputs_are_the_same_with_and_without_prefix_caching(routing, async_scheduling):
    # GRPO-like groups and a shared system prompt on 2 ranks with a small pool (preemption).
    sz = sizes(dp_ranks=2, page_size=2, pages_per_rank=14, max_model_len=24, max_num_batched_tokens=6)
    system = [9, 8, 7, 6, 5, 4]
    arrivals = {
        step: [req(f"{step}.{i}", system + [step + 1, i % 3 + 1], max_tokens=6) for i in range(4)] for step in (0, 3, 9)
    }
    got = {}
    for caching in (False, True):
        sched = DPScheduler(
            sz, routing=routing, eos_token_ids=(), async_scheduling=async_scheduling, prefix_caching=caching
        )
        outputs, _ = run_all(sched, arrivals)
        got[caching] = {rid: o.output_token_ids for rid, o in outputs.items()}
        if caching:
            assert sum(sched.stats()["cached_tokens"]) > 0
    assert got[True] == got[False]


# ------------------------------------------------------------------ routing with a cache


def counters(load, tokens=None, seqs=None):
    c = RankCounters(len(load))
    c.load, c.tokens, c.seqs = list(load), list(tokens or load), list(seqs or [1] * len(load))
    return c


def test_balanced_takes_a_hit_unless_it_makes_its_rank_the_busiest():
    router = Router("balanced", 2)
    assert router.pick(counters([10, 10]), 100, cached=[96, 0]) == 0  # 14 vs 110 on the busiest
    assert router.pick(counters([100, 0]), 100, cached=[96, 0]) == 1  # 104 on rank 0 vs 100 on rank 1


def test_cache_first_takes_the_longest_hit_whatever_the_load():
    router = Router("cache_first", 2)
    assert router.pick(counters([1000, 0]), 100, cached=[16, 0]) == 0
    assert router.pick(counters([1000, 0], tokens=[1000, 5]), 100, cached=[0, 0]) == 1  # no hit: least_tokens


def test_least_load_is_pending_plus_uncached_tokens():
    router = Router("least_load", 3)
    assert router.pick(counters([50, 10, 0]), 100, cached=[96, 0, 0]) == 0  # 54 < 100 on rank 2
    assert router.pick(counters([50, 10, 0]), 100, cached=[0, 95, 0]) == 1  # 15


def test_a_lost_kv_cache_with_a_sample_in_flight_leaves_no_load_behind():
    # Collecting step 0 fails and takes the cache; step 1, in flight, held b's first sample.
    sched = DPScheduler(sizes(max_num_batched_tokens=8), async_scheduling=True)
    model = FakeModel(sched.sizes)
    sched.add_request(req("a", 4, max_tokens=8, ignore_eos=True))
    t0 = sched.schedule()
    model.run(t0)
    b = req("b", 3, max_tokens=8, ignore_eos=True)
    sched.add_request(b)
    model.run(t1 := sched.schedule())
    sched.fail(t0, "injected")
    sched.kv_lost(t1)
    model, outputs = FakeModel(sched.sizes), {}
    while sched.has_unfinished():
        schedule = sched.schedule()
        outputs |= {o.id: o for o in sched.update(schedule, model.run(schedule))}
    assert outputs["a"].finish_reason == "error" and outputs["b"].output_token_ids == reference(b)[0]
    counters = sched.ranks.counters
    assert counters.load == counters.tokens == counters.seqs == [0]
    assert sched.ranks.prefix.tracked_keys(0) == (0, 0)  # none claimed, none being computed
