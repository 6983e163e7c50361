"""The running sequences of every DP rank, as arrays: one slot per running sequence.

Slot g belongs to rank g // max_num_seqs. Every field is a numpy array over
all R × max_num_seqs slots, so that a step over thousands of running
sequences costs a few vectorised operations, not a Python loop per sequence
(the reference system spent ~80 ms a step in per-request Python at 4,096
requests). Like vLLM's input batch, the tokens of each running sequence live in
one row of a [slots, max_model_len] int32 array.

Per slot, while a sequence runs (positions count tokens: prompt, then outputs):

    tokens[g, :known]   its known tokens; known = prompt_len + received
    total               known + samples scheduled but not received yet
    computed            tokens scheduled into the KV cache (optimistic under async scheduling)
    pending             samples scheduled, not received by update()
    in_flight           chunks scheduled, not passed to update()
    last_sample_step    the step of its latest scheduled sample
    table[g, :n_pages]  its KV pages (rank-local ids), position order; zero beyond
    written             tokens in the KV cache from steps that came back (≤ computed)
    shared              its leading pages in the prefix cache (hit at admission, or registered since)
    stamp               admission order (a global counter): chunks are emitted in it
"""

from __future__ import annotations

import numpy as np

from ..sizes import RuntimeSizes, pages_for
from .kv_pages import PagePool
from .sequence import Seq


class Slots:
    def __init__(self, sizes: RuntimeSizes):
        self.sizes = sizes
        R, S = sizes.dp_ranks, sizes.max_num_seqs
        n = R * S
        self.seq: list[Seq | None] = [None] * n
        self.seq_id = np.full(n, -1, np.int64)  # -1: free
        self.stamp = np.zeros(n, np.int64)
        self.tokens = np.zeros((n, sizes.max_model_len), np.int32)
        self.prompt_len = np.zeros(n, np.int64)
        self.max_tokens = np.zeros(n, np.int64)
        self.received = np.zeros(n, np.int64)  # outputs received by update()
        self.total = np.zeros(n, np.int64)
        self.computed = np.zeros(n, np.int64)
        self.written = np.zeros(n, np.int64)
        self.pending = np.zeros(n, np.int64)
        self.in_flight = np.zeros(n, np.int64)
        self.last_sample_step = np.full(n, -2, np.int64)
        self.table = np.zeros((n, sizes.max_pages_per_seq), np.int32)
        self.n_pages = np.zeros(n, np.int64)
        self.shared = np.zeros(n, np.int64)
        self.temperature = np.zeros(n, np.float32)
        self.top_k = np.zeros(n, np.int32)
        self.top_p = np.ones(n, np.float32)
        self.seed = np.zeros(n, np.uint32)
        self.logprobs = np.full(n, -1, np.int32)  # top logprobs each sample returns; -1: none
        self.prompt_logprobs = np.full(n, -1, np.int32)  # top logprobs each prompt token returns; -1: none
        self.adjusts = np.zeros(n, bool)  # its sampler changes its logits first (adjustments.py)
        self.constrained = np.zeros(n, bool)  # its samples follow a grammar (structured.py)
        self.stops = np.full((n, 1), -1, np.int32)  # stop ids, -1 padded; widened on demand
        self.pools = [PagePool(sizes.pages_per_rank) for _ in range(R)]
        self._free = [list(range((r + 1) * S - 1, r * S - 1, -1)) for r in range(R)]  # free slots, lowest on top
        self._next_stamp = 0
        self._order: np.ndarray | None = None  # occupied slots by rank, then admission; None: stale

    def rank_of(self, g):
        return g // self.sizes.max_num_seqs

    def rank_slots(self, rank: int) -> slice:
        S = self.sizes.max_num_seqs
        return slice(rank * S, (rank + 1) * S)

    def running(self, rank: int) -> int:
        return self.sizes.max_num_seqs - len(self._free[rank])

    def has_seat(self, rank: int) -> bool:
        return bool(self._free[rank])

    def in_order(self) -> np.ndarray:
        """Every occupied slot, by rank, then oldest admission first (kept until a slot changes)."""
        if self._order is None:
            g = np.flatnonzero(self.seq_id >= 0)
            self._order = g[np.lexsort((self.stamp[g], self.rank_of(g)))]
        return self._order

    def by_admission(self, rank: int) -> np.ndarray:
        """The rank's occupied slots, oldest admission first."""
        order = self.in_order()
        return order[self.rank_of(order) == rank]

    # -- a sequence enters or leaves a slot -------------------------------------------------

    def start(self, seq: Seq, rank: int, first_chunk: int, hit: list[int]) -> int:
        """Put a waiting sequence into a free slot of `rank`, starting from the cached pages
        `hit` (held for it already), with pages for its first chunk."""
        g = self._free[rank].pop()
        self._order = None
        request, n = seq.request, seq.total
        self.seq[g] = seq
        self.seq_id[g], self.stamp[g], self._next_stamp = seq.id, self._next_stamp, self._next_stamp + 1
        self.tokens[g, :n] = seq.tokens
        self.prompt_len[g], self.max_tokens[g] = seq.prompt_len, request.max_tokens
        self.received[g], self.total[g] = n - seq.prompt_len, n
        self.computed[g] = self.written[g] = len(hit) * self.sizes.page_size
        self.pending[g] = self.in_flight[g] = 0
        self.last_sample_step[g] = -2
        sampling = request.sampling
        self.temperature[g], self.top_k[g], self.top_p[g] = sampling.temperature, sampling.top_k, sampling.top_p
        self.seed[g] = sampling.seed & 0xFFFFFFFF  # the uint32 the sampler keys on
        self.logprobs[g] = -1 if request.logprobs is None else request.logprobs
        self.prompt_logprobs[g] = -1 if request.prompt_logprobs is None else request.prompt_logprobs
        self.adjusts[g] = sampling.adjusts_logits
        self.constrained[g] = seq.guide is not None
        if len(seq.stop) > self.stops.shape[1]:
            wider = np.full((len(self.stops), len(seq.stop)), -1, np.int32)
            wider[:, : self.stops.shape[1]] = self.stops
            self.stops = wider
        self.stops[g] = -1
        self.stops[g, : len(seq.stop)] = seq.stop
        self.table[g, : len(hit)] = hit
        self.n_pages[g] = self.shared[g] = len(hit)
        self.grow(np.array([g]), np.array([first_chunk]))
        seq.slot = g
        return g

    def release(self, g: int) -> Seq:
        """Free slot g and its pages; the sequence keeps its known tokens (to resume or report)."""
        seq = self.seq[g]
        known = self.prompt_len[g] + self.received[g]
        seq.tokens = self.tokens[g, :known].copy()
        self.pools[self.rank_of(g)].free(self.table[g, : self.n_pages[g]])
        self.table[g] = 0
        self.n_pages[g] = self.shared[g] = 0
        self.seq[g], self.seq_id[g], seq.slot = None, -1, -1
        self._free[self.rank_of(g)].append(g)
        self._order = None
        return seq

    # -- pages --------------------------------------------------------------------------------

    def pages_needed(self, g: np.ndarray, plan: np.ndarray) -> np.ndarray:
        """New pages each slot needs to run `plan` more tokens (the one page computation)."""
        return np.maximum(pages_for(self.computed[g] + plan, self.sizes.page_size) - self.n_pages[g], 0)

    def grow(self, g: np.ndarray, plan: np.ndarray, need: np.ndarray | None = None) -> None:
        """Allocate the pages slots `g` (of one rank, or several) need for `plan` more tokens
        (`need`: `pages_needed(g, plan)`, when the caller has it)."""
        need = self.pages_needed(g, plan) if need is None else need
        grow = need > 0
        g, need = g[grow], need[grow]
        if not len(g):
            return
        order = np.argsort(g, kind="stable")  # rank by rank (slots are rank-major)
        g, need = g[order], need[order]
        per_rank = np.bincount(self.rank_of(g), weights=need, minlength=self.sizes.dp_ranks).astype(np.int64)
        pages = np.concatenate([self.pools[r].allocate(int(k)) for r, k in enumerate(per_rank) if k])
        rows = np.repeat(g, need)
        cols = np.repeat(self.n_pages[g], need) + _offsets(need)
        self.table[rows, cols] = pages
        self.n_pages[g] += need


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """[2, 1, 3] -> [0, 1, 0, 0, 1, 2]: each element's index inside its segment."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
