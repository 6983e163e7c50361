"""KV pages on the host side: one pool of rank-local page ids per DP rank.

Each DP rank owns `pages_per_rank` pages of the KV cache, numbered
0 .. pages_per_rank-1 on that rank. A `PagePool` hands them out; a sequence
keeps the pages it holds, in position order, in its `BlockTable`
(page i holds the tokens at positions i*page_size .. (i+1)*page_size-1).
How many pages n tokens take is `sizes.pages_for`.
"""

from __future__ import annotations

import numpy as np


class PagePool:
    """The free pages of one DP rank.

    Pages are handed out from the top of a stack, so a page freed last is
    reused first (its cache lines are still warm) and the order is
    deterministic. Freeing a page that is not in use raises: a page must never
    be owned by two sequences.
    """

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out page 0 first
        self._used = np.zeros(num_pages, bool)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"page pool: {n} pages requested, {len(self._free)} free")
        if n == 0:
            return []
        pages = self._free[: -n - 1 : -1]  # the top n, top first
        del self._free[-n:]
        self._used[pages] = True
        return pages

    def free(self, pages: list[int]) -> None:
        if not pages:
            return
        if not self._used[pages].all() or len(set(pages)) != len(pages):
            raise RuntimeError(f"page pool: freeing pages not in use: {sorted(pages)}")
        self._used[pages] = False
        self._free.extend(reversed(pages))


class BlockTable:
    """The pages one sequence holds, in position order.

    `pages` is a read-only view of the entries in use. Each entry is written
    once (when its page is allocated) and never changes afterwards, because a
    released table is never reused: so a view handed to the input packer stays
    valid even after the table grows.
    """

    __slots__ = ("_buf", "_ro", "pages")

    def __init__(self, max_pages: int):
        self._buf = np.zeros(max_pages, np.int32)
        self._ro = self._buf.view()
        self._ro.flags.writeable = False
        self.pages = self._ro[:0]  # int32 [pages held]

    def __len__(self) -> int:
        return len(self.pages)

    def append(self, pages: list[int]) -> None:
        n, k = len(self.pages), len(pages)
        if k:
            self._buf[n : n + k] = pages
            self.pages = self._ro[: n + k]

    def release(self) -> list[int]:
        """Hand back every page; the table is dead afterwards (see class doc)."""
        pages = self.pages.tolist()
        self._buf = self._ro = self.pages = None  # a later use fails loudly
        return pages
