"""`balanced`'s steps formed for time: the budget whose drain of the work in hand costs least.

With a step-cost table (`step_costs.py`) every step costs what its stride
(the busiest rank's tokens, rounded up to a bucket) costs, whatever its real
tokens. A per-rank budget b decides each step's stride and how fast prefills
advance. `timed_budget` models the next HORIZON_STEPS steps of the work the
ranks hold now, for every bucket as b:

- each running decode emits one token a step until its max_tokens;
- decodes go first; prefill (running prompts, then the waiting ones that have
  seats) takes what the budget leaves;
- once a rank's prefill is done, those sequences decode too (for as many steps
  as the rank's decodes average);

and picks the b with the least modelled time per real token (ties -> the
larger b, which finishes sooner). A small b pads less but takes more steps,
and leaves a long prompt's tail to run later with fewer ranks busy beside it;
a large b keeps a long prompt off the critical path but pads the other ranks
while it runs. The table decides between them; padding efficiency does not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from .slots import Slots

HORIZON_STEPS = 256  # the steps a drain is modelled over
DEFAULT_DECODE_STEPS = 32  # a joining sequence's decode steps when no decode runs to learn from


@dataclasses.dataclass(frozen=True)
class WorkInHand:
    """What every rank holds, as arrays over ranks."""

    decode_left: Sequence[np.ndarray]  # per rank: each running decode's outputs still to come
    prefill: np.ndarray  # int [R]: prompt tokens to compute (running, then waiting with a seat)
    joiners: np.ndarray  # int [R]: sequences in that prefill

    def alive(self, horizon: int) -> np.ndarray:
        """[R, horizon]: running decodes still emitting at each future step."""
        out = np.zeros((len(self.decode_left), horizon), np.int64)
        for r, left in enumerate(self.decode_left):
            counts = np.bincount(np.minimum(left, horizon), minlength=horizon + 1)
            out[r] = counts[::-1].cumsum()[::-1][1:]  # decodes with more than k outputs to come
        return out

    def decode_steps(self) -> np.ndarray:
        """[R]: how long a joining sequence decodes: the rank's running decodes' mean."""
        means = [float(left.mean()) if len(left) else DEFAULT_DECODE_STEPS for left in self.decode_left]
        return np.maximum(np.round(means), 1).astype(np.int64)


def work_in_hand(slots: Slots, waiting: Sequence[int], loads: Sequence[int]) -> WorkInHand:
    """What every rank holds: its running decodes (outputs still to come), its prompt tokens
    (running ones, then waiting ones with a seat) and their sequences. `waiting`: sequences
    waiting per rank; `loads`: tokens still to run per rank (routing.RankCounters.load)."""
    sl, R, S = slots, slots.sizes.dp_ranks, slots.sizes.max_num_seqs
    active = sl.seq_id >= 0
    remaining = np.where(active, sl.total - sl.computed, 0)
    decoding = active & (remaining <= 1)
    outputs_left = np.maximum(sl.max_tokens - (sl.total - sl.prompt_len) + (remaining == 1), 1)
    prefilling = remaining > 1
    rank = sl.rank_of(np.arange(len(sl.seq_id)))
    running_prefill = np.bincount(rank, weights=np.where(prefilling, remaining, 0), minlength=R).astype(np.int64)
    admissible = np.minimum(waiting, [S - sl.running(r) for r in range(R)])
    # A rank's load counts every uncomputed token: what its running sequences hold is not waiting.
    held = np.bincount(rank, weights=remaining, minlength=R).astype(np.int64)
    waiting_tokens = np.maximum(np.asarray(loads, np.int64) - held, 0)
    seated = np.where(np.asarray(waiting) > 0, admissible / np.maximum(waiting, 1), 0.0)  # their share with a seat
    return WorkInHand(
        decode_left=[outputs_left[sl.rank_slots(r)][decoding[sl.rank_slots(r)]] for r in range(R)],
        prefill=running_prefill + np.round(waiting_tokens * seated).astype(np.int64),
        joiners=np.bincount(rank, weights=prefilling, minlength=R).astype(np.int64) + admissible,
    )


def timed_budget(work: WorkInHand, buckets: Sequence[int], costs_ms: Mapping[int, float]) -> int:
    """The per-rank token budget of the next step (see the module doc).

    >>> b = (8, 16, 32, 64)
    >>> hold = WorkInHand([np.array([], int), np.array([40] * 8)], np.array([500, 0]), np.array([1, 0]))
    >>> timed_budget(hold, b, {x: 10.0 for x in b})  # all fixed cost: the long prompt goes fast
    64
    >>> timed_budget(hold, b, {x: 0.1 * x for x in b})  # all per token: both ranks kept busy
    16
    """
    H = HORIZON_STEPS
    alive = work.alive(H)  # [R, H]
    k = np.arange(H)
    cost = np.array([costs_ms[b] for b in buckets])
    budgets = np.asarray(buckets, np.int64)[:, None, None]  # [B, 1, 1]
    room = np.clip(budgets - alive, 0, None)  # prefill tokens a step can take, [B, R, H]
    done = np.minimum(np.cumsum(room, axis=2), work.prefill[None, :, None])
    chunk = np.diff(done, axis=2, prepend=0)
    finished = (done >= work.prefill[None, :, None]) & (work.prefill[None, :, None] > 0)
    first = np.where(finished.any(axis=2), finished.argmax(axis=2), H)  # [B, R]: the step it completes
    steps = work.decode_steps()[None, :, None]
    joined = (k > first[..., None]) & (k <= first[..., None] + steps)
    tokens = np.minimum(alive + chunk + joined * work.joiners[None, :, None], budgets)
    busiest = tokens.max(axis=1)  # [B, H]
    stride = np.minimum(np.searchsorted(buckets, busiest), len(buckets) - 1)
    step_ms = np.where(busiest > 0, cost[stride], 0.0).sum(axis=1)
    real = tokens.sum(axis=(1, 2))
    fits = (budgets[:, 0, 0] >= alive[:, 0].max(initial=0)) & (real > 0)  # every decode of the next step fits
    if not fits.any():
        return int(buckets[-1])
    per_token = np.where(fits, step_ms / np.maximum(real, 1), np.inf)
    best = per_token.min()
    return int(budgets[:, 0, 0][per_token <= best * (1 + 1e-9)].max())
