"""Routing policies on small examples with exact rank assignments."""

import pytest

from shardspec.runtime.routing import RankCounters, Router


def assign(policy, prompts, ranks=2, counters=None):
    """Route each prompt length in turn, counting it as waiting on its rank."""
    router, counters = Router(policy, ranks), counters or RankCounters(ranks)
    out = []
    for n in prompts:
        rank = router.pick(counters, n)
        counters.arrived(rank, n, n)
        out.append(rank)
    return out


def test_round_robin_takes_ranks_in_turn():
    assert assign("round_robin", [5, 1, 1, 9, 1], ranks=3) == [0, 1, 2, 0, 1]


def test_least_tokens_and_balanced_agree_on_waiting_prompts():
    assert assign("least_tokens", [10, 3, 4, 2]) == [0, 1, 1, 1]
    assert assign("balanced", [10, 3, 4, 2]) == [0, 1, 1, 1]


def test_balanced_counts_what_is_left_to_compute_least_tokens_counts_everything():
    # Rank 0 has computed a 10-token prompt and decodes (load 1, 11 tokens);
    # rank 1 has a 4-token prompt waiting (load 4, 4 tokens).
    def counters():
        c = RankCounters(2)
        c.arrived(0, 10, 10)
        c.stepped(computed=[10, 0], sampled=[1, 0])  # the prompt ran; its first sample is pending
        c.arrived(1, 4, 4)
        return c

    assert assign("least_tokens", [4], counters=counters()) == [1]  # 11 vs 4 tokens
    assert assign("balanced", [4], counters=counters()) == [0]  # max(1+4, 4)=5 beats max(4+4, 1)=8


def test_balanced_breaks_ties_by_fewest_sequences_then_lowest_rank():
    # After 20 -> rank 0, every choice for 5 and for 1 leaves the largest load at
    # 20: rank 1 (lowest) gets 5, then rank 2 (fewer sequences) gets 1.
    assert assign("balanced", [20, 5, 1], ranks=3) == [0, 1, 2]


def test_candidates_restrict_the_choice():
    counters = RankCounters(3)
    assert Router("balanced", 3).pick(counters, 4, candidates=[2, 1]) == 1
    assert Router("least_tokens", 3).pick(counters, 4, candidates=[2]) == 2
    rr = Router("round_robin", 3)
    picks = [rr.pick(counters, 1, candidates=[0, 2]), rr.pick(counters, 1, candidates=[0, 2]), rr.pick(counters, 1)]
    assert picks == [0, 2, 0]


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match="unknown policy 'random' .use one of balanced, least_load, cache_first, least_tokens, round_robin",
    ):
        Router("random", 2)
