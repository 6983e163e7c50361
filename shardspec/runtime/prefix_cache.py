"""Prefix caching per DP rank: a request skips the KV pages another one computed.

A full page of known tokens is named by a hash chain: page i's key covers the
tokens 0 … (i+1)·page_size, so equal keys mean equal prefixes, and a lookup is
the longest leading run of a sequence's keys that its rank's pool holds
(`kv_pages.PagePool`). The keys are blake2b digests: the same on every process,
as the multi-host design needs.

What this module keeps beside the pools, per rank:

- claims: the keys of the full pages of every sequence on the rank (waiting or
  running). Routing counts a claimed page as good as cached there: requests
  that arrive together and share a prefix (a GRPO group) see each other before
  any of them has run;
- computing: keys being computed now by an admitted sequence, not yet
  registered. A waiting sequence whose next page is being computed waits for it
  (at most `PREFIX_WAIT_STEPS` steps) instead of computing it too.

Pages are registered by the scheduler once the step that wrote them came
back, so a page is never shared before its contents exist: a prompt's pages by
`update()` as its chunks land (requests arriving meanwhile share them), the
pages of outputs when their sequence leaves its slot (finished, preempted,
aborted: one call a sequence, not one a decode step). Only pages
a sequence will not write again are shared: the hit stops short of the last
known token, which is always computed (the step needs its logit).
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np

from .kv_pages import PagePool
from .sequence import Seq
from .slots import Slots

PREFIX_WAIT_STEPS = 16  # longest a waiting sequence waits for another's prefix pages


def extend_keys(keys: list[bytes], tokens: np.ndarray, page_size: int) -> list[bytes]:
    """Extend the hash chain `keys` (of tokens' first len(keys) pages) to every full page of
    `tokens` (int32: a slot's row or a waiting sequence's tokens)."""
    start, end = len(keys), len(tokens) // page_size
    if end <= start:
        return keys
    data, step = tokens[start * page_size : end * page_size].tobytes(), page_size * tokens.itemsize
    key = keys[-1] if keys else b""
    for offset in range(0, len(data), step):  # one numpy read for every new page, then bytes
        key = hashlib.blake2b(key + data[offset : offset + step], digest_size=16).digest()
        keys.append(key)
    return keys


def shareable_pages(known_tokens: int, page_size: int) -> int:
    """Leading pages a sequence of `known_tokens` may take from the cache: full ones
    that leave its last token to compute."""
    return (known_tokens - 1) // page_size


class PrefixCache:
    """The keys of every rank: what its pool caches, what its sequences claim and compute."""

    def __init__(self, pools: list[PagePool], page_size: int):
        self.pools, self.page_size = pools, page_size
        ranks = range(len(pools))
        self._claims: list[collections.Counter[bytes]] = [collections.Counter() for _ in ranks]
        self._computing: list[dict[bytes, int]] = [{} for _ in ranks]  # key -> the seq id computing it

    def keys(self, seq: Seq) -> list[bytes]:
        """A waiting sequence's page keys, up to the pages it may share."""
        extend_keys(seq.keys, seq.tokens, self.page_size)
        return seq.keys[: shareable_pages(seq.total, self.page_size)]

    # -- routing ---------------------------------------------------------------------------------

    def expected_hit(self, rank: int, seq: Seq) -> int:
        """Tokens of waiting `seq` that `rank` holds or will hold (cached, or claimed there)."""
        pool, claims, n = self.pools[rank], self._claims[rank], 0
        for key in self.keys(seq):
            if not (pool.holds(key) or key in claims):
                break
            n += 1
        return n * self.page_size

    def claim(self, rank: int, seq: Seq) -> None:
        """`seq` joins `rank` (arrives, or moves there)."""
        seq.claimed = list(self.keys(seq))
        self._claims[rank].update(seq.claimed)

    def unclaim(self, rank: int, seq: Seq) -> None:
        """`seq` leaves `rank` (finishes, or moves away)."""
        claims = self._claims[rank]
        claims.subtract(seq.claimed)
        for key in seq.claimed:
            if claims.get(key, 0) <= 0:
                claims.pop(key, None)
        seq.claimed = []

    def tracked_keys(self, rank: int) -> tuple[int, int]:
        """(keys claimed, keys being computed) on `rank`: both 0 once its sequences are done."""
        return len(self._claims[rank]), len(self._computing[rank])

    # -- admission -------------------------------------------------------------------------------

    def hit(self, rank: int, seq: Seq) -> list[int]:
        """The cached pages waiting `seq` can start from on `rank`: none for a request that wants
        its prompt's logprobs (they come from computing every prompt token)."""
        if seq.request.prompt_logprobs is not None:
            return []
        return self.pools[rank].lookup(self.keys(seq))

    def should_wait(self, rank: int, seq: Seq, hit_pages: int) -> bool:
        """Whether `seq` waits: the page after its hit is being computed on `rank` by
        another sequence, and it has not waited `PREFIX_WAIT_STEPS` steps for it yet."""
        if seq.prefix_waits >= PREFIX_WAIT_STEPS or seq.request.prompt_logprobs is not None:
            return False
        keys = self.keys(seq)
        return hit_pages < len(keys) and keys[hit_pages] in self._computing[rank]

    def started(self, rank: int, seq: Seq, hit_pages: int) -> None:
        """`seq` was admitted on `rank` with `hit_pages` cached pages: it computes the rest."""
        computing = self._computing[rank]
        for key in self.keys(seq)[hit_pages:]:
            computing.setdefault(key, seq.id)

    def stopped(self, rank: int, seq: Seq) -> None:
        """`seq` left its slot: what it was computing is nobody's now."""
        computing = self._computing[rank]
        for key in seq.keys:
            if computing.get(key) == seq.id:
                del computing[key]

    # -- registration ----------------------------------------------------------------------------

    def cache_prompt_pages(self, slots: Slots, g: np.ndarray, ends: np.ndarray) -> None:
        """Slots `g` have `ends` tokens in the KV cache from steps that came back: register
        the prompt pages they filled (their contents exist now), so that requests arriving
        meanwhile share them. Pages of outputs are registered when their sequence leaves
        its slot (`cache_written`): one call a sequence, not one a decode step."""
        full = np.minimum(ends, slots.prompt_len[g]) // self.page_size
        new = full > slots.shared[g]
        if new.any():
            self._register_slots(slots, g[new], full[new])

    def cache_written(self, slots: Slots, g: int) -> None:
        """Slot g's sequence leaves it: register every full page it has written."""
        if (full := int(slots.written[g]) // self.page_size) > slots.shared[g]:
            self._register_slots(slots, np.array([g]), np.array([full]))

    def _register_slots(self, slots: Slots, g: np.ndarray, full: np.ndarray) -> None:
        """Cache the pages of slots `g` from their last cached one up to page `full` (excluded)."""
        for slot, first, end in zip(g.tolist(), slots.shared[g].tolist(), full.tolist()):
            rank = int(slots.rank_of(slot))
            self.register(rank, slots.seq[slot], slots.tokens[slot], slots.table[slot], first, end)
        slots.shared[g] = np.maximum(slots.shared[g], full)

    def register(self, rank: int, seq: Seq, tokens: np.ndarray, table: np.ndarray, first: int, end: int) -> None:
        """Pages first … end-1 of running `seq` (its row `table`, its known `tokens`) are
        full and written: cache them."""
        keys = extend_keys(seq.keys, tokens[: end * self.page_size], self.page_size)
        register, computing = self.pools[rank].register, self._computing[rank]
        for page, key in zip(table[first:end].tolist(), keys[first:end]):
            register(page, key)
            if computing and computing.get(key) == seq.id:
                del computing[key]

    def lost(self) -> None:
        """The KV cache's contents are gone: forget every key. Idle pages are free now; held
        ones go back to the free stack when their holders, all about to be preempted, let go."""
        for pool, computing in zip(self.pools, self._computing):
            pool.forget_cache()
            computing.clear()


class NoPrefixCache:
    """`kv_cache.prefix_caching: false`: a prefix cache that caches nothing and finds nothing."""

    def expected_hit(self, rank: int, seq: Seq) -> int:
        return 0

    def claim(self, rank: int, seq: Seq) -> None:
        pass

    def unclaim(self, rank: int, seq: Seq) -> None:
        pass

    def hit(self, rank: int, seq: Seq) -> list[int]:
        return []

    def should_wait(self, rank: int, seq: Seq, hit_pages: int) -> bool:
        return False

    def started(self, rank: int, seq: Seq, hit_pages: int) -> None:
        pass

    def stopped(self, rank: int, seq: Seq) -> None:
        pass

    def cache_prompt_pages(self, slots: Slots, g: np.ndarray, ends: np.ndarray) -> None:
        pass

    def cache_written(self, slots: Slots, g: int) -> None:
        pass

    def lost(self) -> None:
        pass
