"""KV pages on the host side: one pool of rank-local page ids per DP rank.

Each DP rank owns `pages_per_rank` pages of the KV cache, numbered
0 .. pages_per_rank-1 on that rank. A `PagePool` hands them out; a running
sequence keeps the pages it holds, in position order, in its row of the
scheduler's block tables (`slots.py`): page i holds the tokens at positions
i*page_size .. (i+1)*page_size-1. How many pages n tokens take is
`sizes.pages_for`.
"""

from __future__ import annotations

import numpy as np


class PagePool:
    """The free pages of one DP rank, as a numpy stack (allocations come in batches).

    Pages are handed out from the top of the stack, so a page freed last is
    reused first and the order is deterministic. Freeing a page that is not in
    use raises: a page must never be owned by two sequences.
    """

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._stack = np.arange(num_pages - 1, -1, -1, dtype=np.int32)  # the top (end) is page 0
        self._top = num_pages  # stack[:top] are free
        self._used = np.zeros(num_pages, bool)

    @property
    def num_free(self) -> int:
        return self._top

    @property
    def num_used(self) -> int:
        return self.num_pages - self._top

    def allocate(self, n: int) -> np.ndarray:
        """The top `n` free pages, top first (int32)."""
        if n > self._top:
            raise RuntimeError(f"page pool: {n} pages requested, {self._top} free")
        pages = self._stack[self._top - n : self._top][::-1].copy()
        self._top -= n
        self._used[pages] = True
        return pages

    def free(self, pages) -> None:
        pages = np.asarray(pages, np.int32)
        if not len(pages):
            return
        if not self._used[pages].all() or len(np.unique(pages)) != len(pages):
            raise RuntimeError(f"page pool: freeing pages not in use: {sorted(pages.tolist())}")
        self._used[pages] = False
        self._stack[self._top : self._top + len(pages)] = pages[::-1]  # the first one freed ends on top
        self._top += len(pages)
