"""KV pages on the host side: one pool of rank-local page ids per DP rank.

Each DP rank owns `pages_per_rank` pages of the KV cache, numbered
0 .. pages_per_rank-1 on that rank. A `PagePool` hands them out; a running
sequence keeps the pages it holds, in position order, in its row of the
scheduler's block tables (`slots.py`): page i holds the tokens at positions
i*page_size .. (i+1)*page_size-1. How many pages n tokens take is
`sizes.pages_for`.

With prefix caching (`prefix_cache.py`) a full page of computed tokens is
registered under the key of its prefix and may be shared: pages are
reference-counted, and a page nobody references that holds a key stays cached
until an allocation needs it, least recently released first.
"""

from __future__ import annotations

import collections

import numpy as np


class PagePool:
    """The pages of one DP rank: free, in use (referenced), or cached and idle.

    Free pages are a numpy stack handed out from the top, so a page freed last
    is reused first and the order is deterministic. When the stack runs short,
    `allocate` evicts idle cached pages, least recently released first: they
    count as free. Releasing a page nobody holds raises: it would be owned twice.
    """

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._stack = np.arange(num_pages - 1, -1, -1, dtype=np.int32)  # the top (end) is page 0
        self._top = num_pages  # stack[:top] are free
        self._refs = np.zeros(num_pages, np.int32)
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unreferenced; LRU first
        self._key_of: dict[int, bytes] = {}  # every cached page (in use or idle) -> its key
        self._page_of: dict[bytes, int] = {}
        self._cached = np.zeros(num_pages, bool)  # page holds a key (_key_of, as a mask for free())

    @property
    def num_free(self) -> int:
        """Pages `allocate` can hand out: free ones and idle cached ones."""
        return self._top + len(self._idle)

    @property
    def num_used(self) -> int:
        """Pages some sequence holds."""
        return self.num_pages - self.num_free

    @property
    def num_cached(self) -> int:
        """Pages holding a key, in use or idle."""
        return len(self._key_of)

    def refs(self, pages) -> np.ndarray:
        return self._refs[np.asarray(pages, np.int64)]

    def allocate(self, n: int) -> np.ndarray:
        """`n` pages for one holder each: the top free ones, top first, then the least
        recently released idle cached ones (their keys forgotten)."""
        if n > self.num_free:
            raise RuntimeError(f"page pool: {n} pages requested, {self.num_free} free")
        take = min(n, self._top)
        pages = self._stack[self._top - take : self._top][::-1].copy()
        self._top -= take
        if take < n:
            evicted = [self._evict() for _ in range(n - take)]
            pages = np.concatenate([pages, np.array(evicted, np.int32)])
        self._refs[pages] = 1
        return pages

    def _evict(self) -> int:
        page, _ = self._idle.popitem(last=False)
        del self._page_of[self._key_of.pop(page)]
        self._cached[page] = False
        return page

    def free(self, pages) -> None:
        """Release one hold on each of `pages` (a sequence's, in position order). A page
        left unheld goes back: to the cache if it holds a key (the last page first in
        line for eviction, so a prefix outlives its tail), else to the free stack."""
        pages = np.asarray(pages, np.int32)
        if not len(pages):
            return
        if not (self._refs[pages] > 0).all() or len(np.unique(pages)) != len(pages):
            raise RuntimeError(f"page pool: freeing pages not in use: {sorted(pages.tolist())}")
        self._refs[pages] -= 1
        unheld = pages[self._refs[pages] == 0]
        if self._key_of:
            cached = self._cached[unheld]
            self._idle.update(dict.fromkeys(unheld[cached][::-1].tolist()))
            unheld = unheld[~cached]
        self._stack[self._top : self._top + len(unheld)] = unheld[::-1]  # the first one freed ends on top
        self._top += len(unheld)

    # -- the prefix cache's pages -----------------------------------------------------------------

    def register(self, page: int, key: bytes) -> bool:
        """Cache held page `page` under `key`; False if another page holds that key already
        (the same prefix computed twice: this copy stays private)."""
        if self._refs[page] <= 0:
            raise RuntimeError(f"page pool: registering page {page}, which nobody holds")
        if key in self._page_of or page in self._key_of:
            return False
        self._page_of[key], self._key_of[page] = page, key
        self._cached[page] = True
        return True

    def lookup(self, keys) -> list[int]:
        """The cached pages of the longest leading run of `keys`."""
        pages = []
        for key in keys:
            page = self._page_of.get(key)
            if page is None:
                break
            pages.append(page)
        return pages

    def holds(self, key: bytes) -> bool:
        return key in self._page_of

    def acquire(self, pages) -> None:
        """One more hold on each of the cached `pages` (a prefix hit)."""
        for p in pages:
            self._idle.pop(p, None)
        self._refs[np.asarray(pages, np.int64)] += 1

    def idle_count(self, pages) -> int:
        """How many of `pages` nobody holds (acquiring them takes them off the free count)."""
        return sum(1 for p in pages if p in self._idle)

    def forget_cache(self) -> None:
        """Every key goes (the cache's contents are lost): idle pages become free."""
        idle = np.array(list(self._idle), np.int32)
        self._idle.clear()
        self._key_of.clear()
        self._page_of.clear()
        self._cached[:] = False
        self._stack[self._top : self._top + len(idle)] = idle[::-1]
        self._top += len(idle)
