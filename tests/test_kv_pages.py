"""Per-rank page pools."""

import numpy as np
import pytest

from shardspec.runtime.kv_pages import PagePool
from shardspec.sizes import pages_for


def test_pages_for_rounds_up():
    assert [pages_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_pool_hands_out_low_ids_first_and_reuses_freed_pages_first():
    pool = PagePool(6)
    assert pool.allocate(2).tolist() == [0, 1] and pool.allocate(1).tolist() == [2]
    pool.free([0, 1])
    assert (pool.num_free, pool.num_used) == (5, 1)
    assert pool.allocate(3).tolist() == [0, 1, 3]
    assert pool.allocate(0).tolist() == [] and pool.allocate(0).dtype == np.int32


def test_pool_refuses_to_overcommit_or_free_a_page_twice():
    pool = PagePool(3)
    pages = pool.allocate(2)
    with pytest.raises(RuntimeError, match="3 pages requested, 1 free"):
        pool.allocate(3)
    pool.free(pages)
    with pytest.raises(RuntimeError, match=r"freeing pages not in use: \[0, 1\]"):
        pool.free(pages)
    pool.allocate(1)
    with pytest.raises(RuntimeError, match="not in use"):
        pool.free([0, 0])
    assert pool.num_free == 2
