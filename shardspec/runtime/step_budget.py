"""How many tokens each DP rank may run in a step: `balanced`'s step forming.

With a step-cost table (`step_costs.py`) the budget is formed for time
(`step_time.timed_budget`); without one, `balanced_budget` keeps padding low:

Every rank of an SPMD step is padded to one stride, so a rank that runs 512
tokens while the others have 30 each wastes 7 × 482 tokens. The `balanced`
policy therefore caps every rank at a common budget: the largest token bucket
that keeps the step's balance (real tokens ÷ ranks × the busiest rank's tokens,
estimated from each rank's pending load) at STEP_EFFICIENCY, or the most
balanced bucket when none does (ties -> the larger, which finishes sooner).
Long prefills then advance in smaller chunks while the other ranks have work;
the budget never drops below one token per running sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

STEP_EFFICIENCY = 0.9  # balance a step aims for


def balanced_budget(loads: Sequence[int], running: Sequence[int], buckets: Sequence[int], cap: int) -> int:
    """Per-rank token budget for one step.

    loads: tokens each rank still has to run; running: its running sequences;
    buckets: the token strides a step may have (ascending, the last = cap).

    >>> balanced_budget([2000, 30, 30, 30], [1, 4, 4, 4], (8, 16, 32, 64, 128, 256, 512), 512)
    32
    >>> balanced_budget([2000, 0, 0, 0], [1, 0, 0, 0], (8, 16, 32, 64, 128, 256, 512), 512)
    512
    """
    demand = [min(load, cap) for load in loads]
    floor = max(min(n, d) for n, d in zip(running, demand))
    candidates = [b for b in buckets if b >= floor] or [cap]
    # Imbalance only: the busiest rank's own rounding up to a bucket is not
    # counted, so one rank alone always takes its full budget.
    busiest = max(max(demand), 1)
    balance = {b: sum(min(d, b) for d in demand) / (len(demand) * min(b, busiest)) for b in candidates}
    goal = min(STEP_EFFICIENCY, max(balance.values()) - 1e-9)
    return max(b for b in candidates if balance[b] >= goal)
