"""Per-rank page pools and per-sequence block tables."""

import numpy as np
import pytest

from shardspec.runtime.kv_pages import BlockTable, PagePool
from shardspec.sizes import pages_for


def test_pages_for_rounds_up():
    assert [pages_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_pool_hands_out_low_ids_first_and_reuses_freed_pages_first():
    pool = PagePool(6)
    assert pool.allocate(2) == [0, 1] and pool.allocate(1) == [2]
    pool.free([0, 1])
    assert (pool.num_free, pool.num_used) == (5, 1)
    assert pool.allocate(3) == [0, 1, 3]
    assert pool.allocate(0) == []


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


def test_block_table_views_are_read_only_and_stay_valid_as_it_grows():
    table = BlockTable(max_pages=4)
    table.append([7, 3])
    first = table.pages
    table.append([5])
    assert first.tolist() == [7, 3] and table.pages.tolist() == [7, 3, 5] and len(table) == 3
    assert table.pages.dtype == np.int32
    with pytest.raises(ValueError, match="read-only"):
        table.pages[0] = 1
    assert table.release() == [7, 3, 5]
    assert first.tolist() == [7, 3]  # a released table is never written again
