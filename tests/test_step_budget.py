"""The balanced policy's per-step token budget."""

import doctest

from shardspec.runtime import step_budget
from shardspec.runtime.step_budget import balanced_budget

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
