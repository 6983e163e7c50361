"""The balanced policy's per-step token budget: padding-balanced, and formed for time."""

import doctest

import numpy as np

from shardspec.runtime import step_budget, step_time
from shardspec.runtime.step_budget import balanced_budget
from shardspec.runtime.step_time import WorkInHand, timed_budget

BUCKETS = (8, 16, 32, 64, 128, 256, 512)


def test_docstring_examples():
    assert doctest.testmod(step_budget).failed == 0


def test_a_long_prefill_is_cut_to_what_the_other_ranks_can_fill():
    assert balanced_budget([2000, 120, 110, 130], [1, 3, 3, 3], BUCKETS, 512) == 128


def test_evenly_loaded_ranks_get_the_full_budget():
    assert balanced_budget([900, 800, 700, 1000], [2, 2, 2, 2], BUCKETS, 512) == 512


def test_never_below_one_token_per_running_sequence():
    assert balanced_budget([2000, 40, 40, 40], [1, 40, 40, 40], BUCKETS, 512) >= 40


def test_one_rank_alone_runs_its_whole_budget():
    assert balanced_budget([5000], [3], BUCKETS, 512) == 512
    assert balanced_budget([0, 0], [0, 0], BUCKETS, 512) == 512


# ------------------------------------------------------------------ formed for time (step_time.py)


def hold(decodes, prefill, joiners=None):
    """WorkInHand from per-rank decode lengths and prompt tokens."""
    joiners = [int(p > 0) for p in prefill] if joiners is None else joiners
    return WorkInHand([np.array(d, np.int64) for d in decodes], np.array(prefill), np.array(joiners))


def test_step_time_docstring_examples():
    assert doctest.testmod(step_time).failed == 0


def test_a_fixed_cost_step_runs_a_long_prompt_at_the_full_budget():
    work = hold([[], [30] * 4, [30] * 4, [30] * 4], [2000, 0, 0, 0])
    assert timed_budget(work, BUCKETS, {b: 5.0 + 0.0001 * b for b in BUCKETS}) == 512


def test_a_per_token_step_keeps_the_long_prompt_beside_the_decodes():
    work = hold([[], [60] * 30, [60] * 30, [60] * 30], [2000, 0, 0, 0])
    assert timed_budget(work, BUCKETS, {b: 0.01 * b for b in BUCKETS}) == 32


def test_the_budget_always_fits_every_decode():
    work = hold([[], [10] * 40], [3000, 0])
    assert timed_budget(work, BUCKETS, {b: 0.01 * b for b in BUCKETS}) >= 40
    assert timed_budget(hold([[], []], [0, 0]), BUCKETS, {b: 1.0 for b in BUCKETS}) == 512


def test_alive_counts_each_decode_until_its_last_output():
    assert hold([[1, 3], []], [0, 0]).alive(4).tolist() == [[2, 1, 1, 0], [0, 0, 0, 0]]
