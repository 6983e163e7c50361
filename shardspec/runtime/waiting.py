"""Each DP rank's waiting queue: oldest request first, removals in O(1)."""

from __future__ import annotations

import heapq

from .sequence import Seq, Status


class WaitingQueues:
    """One heap of seq ids per rank (arrival order). An aborted or moved sequence is
    not searched for: its stale heap entry is dropped when it reaches the front."""

    def __init__(self, dp_ranks: int, seqs: dict[int, Seq]):
        self._heaps: list[list[int]] = [[] for _ in range(dp_ranks)]
        self._counts = [0] * dp_ranks
        self._seqs = seqs  # the scheduler's unfinished sequences, by id

    def count(self, rank: int) -> int:
        return self._counts[rank]

    def counts(self) -> list[int]:
        return list(self._counts)

    def push(self, rank: int, seq: Seq) -> None:
        seq.rank, seq.status = rank, Status.WAITING
        heapq.heappush(self._heaps[rank], seq.id)
        self._counts[rank] += 1

    def front(self, rank: int) -> Seq | None:
        """The oldest sequence waiting on `rank`."""
        heap = self._heaps[rank]
        while heap:
            seq = self._seqs.get(heap[0])
            if seq is not None and seq.status is Status.WAITING and seq.rank == rank:
                return seq
            heapq.heappop(heap)
        return None

    def pop_front(self, rank: int) -> Seq:
        seq = self.front(rank)
        heapq.heappop(self._heaps[rank])
        self._counts[rank] -= 1
        return seq

    def discard(self, seq: Seq) -> None:
        """`seq` leaves its queue (aborted); its heap entry goes stale."""
        self._counts[seq.rank] -= 1
