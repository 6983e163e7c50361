"""Routing: which DP rank a new (or spilled) request waits on.

The scheduler keeps three counters per rank, updated in O(1) as sequences
arrive, compute, sample, move and finish, so that routing never walks the
requests:

- `load`: tokens the rank still has to run for its sequences: the prompt
  tokens (plus, after a preemption, the tokens to recompute) not yet computed,
  and 1 for each sequence in decode;
- `tokens`: all tokens (prompt + output) of its running and waiting sequences;
- `seqs`: its running and waiting sequences.

With prefix caching a waiting sequence counts on its rank's `load` only with
the tokens it will still compute there (`Seq.credit`: the tokens its rank holds
or will hold, see prefix_cache.py); admission settles the difference with what
the cache really held then.

Policies (`runtime.routing`); `cached[r]`: the request's tokens rank r holds:

- `balanced` (default): the rank that keeps the busiest rank's `load` after
  the assignment lowest, counting only the request's uncached tokens there,
  in steps (load ÷ the per-step token budget, rounded up); ties -> fewest
  tokens to compute (the cache hit), then the least load on the rank after
  it, the busiest load exactly, fewest `seqs`, lowest rank. A hit wins unless
  it costs the busiest rank another step, so one prompt's samples (a GRPO
  group) share a rank and its cached prompt until that rank is a step busier
  than the rest; counting pending prefill tokens keeps one long prompt from
  landing on a rank that already has one (the reference system's lockstep
  padding made every rank wait for the busiest);
- `least_load`: the rank with the fewest `tokens` (all it holds, computed or
  not) + the request's uncached tokens: the reference system's formula with
  a prefix cache; ties -> lowest rank;
- `cache_first`: the longest hit wins outright (the reference system's first
  rule, which pinned whole GRPO groups to one rank); without a hit, as
  `least_tokens`;
- `least_tokens`: the rank with the fewest `tokens` (the reference system's
  rule without a prefix cache); ties -> lowest rank;
- `round_robin`: ranks in turn.

Every policy is deterministic: the same calls give the same ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

POLICIES = ("balanced", "least_load", "cache_first", "least_tokens", "round_robin")


class RankCounters:
    """Per-rank `load`, `tokens` and `seqs` (see the module doc), as lists of ints.

    They change only through the events below, one per thing that happens to a
    sequence, so each counter's meaning is stated once.
    """

    __slots__ = ("load", "tokens", "seqs")

    def __init__(self, dp_ranks: int):
        self.load = [0] * dp_ranks
        self.tokens = [0] * dp_ranks
        self.seqs = [0] * dp_ranks

    def arrived(self, rank: int, tokens: int, uncached: int) -> None:
        """A sequence of `tokens` known tokens, `uncached` of them to compute there, joins `rank`."""
        self.load[rank] += uncached
        self.tokens[rank] += tokens
        self.seqs[rank] += 1

    def started(self, rank: int, skipped: int) -> None:
        """A sequence started with `skipped` more cached tokens than its rank's load expected
        (fewer when negative: its expected pages were gone)."""
        self.load[rank] -= skipped

    def left(self, rank: int, uncomputed: int, tokens: int) -> None:
        """A sequence leaves `rank` (finished, or moved away) with `uncomputed` of its `tokens` not run."""
        self.load[rank] -= uncomputed
        self.tokens[rank] -= tokens
        self.seqs[rank] -= 1

    def preempted(self, rank: int, rerun: int, lost: int = 0) -> None:
        """A sequence dropped its pages: `rerun` of its computed tokens will be run again, and
        `lost` samples it had scheduled will never arrive (they are scheduled again)."""
        self.load[rank] += rerun - lost
        self.tokens[rank] -= lost

    def stepped(self, computed: Sequence[int], sampled: Sequence[int]) -> None:
        """A step ran `computed[r]` tokens and scheduled `sampled[r]` samples (new tokens) per rank."""
        for r, (c, s) in enumerate(zip(computed, sampled)):
            self.load[r] += s - c
            self.tokens[r] += s


class Router:
    """Picks a rank for a sequence of `tokens` tokens among `candidates` (default: all)."""

    def __init__(self, policy: str, dp_ranks: int, step_tokens: int = 1):
        """`step_tokens`: tokens a rank runs per step (`balanced` counts load in steps)."""
        if policy not in POLICIES:
            raise ValueError(f"routing: unknown policy {policy!r} (use one of {', '.join(POLICIES)})")
        self.policy = policy
        self.dp_ranks = dp_ranks
        self.step_tokens = step_tokens
        self._next = 0  # round_robin cursor

    @property
    def uses_cache(self) -> bool:
        """Whether `pick` reads `cached` (the scheduler probes the ranks only then)."""
        return self.policy in ("balanced", "least_load", "cache_first")

    def pick(
        self,
        counters: RankCounters,
        tokens: int,
        cached: Sequence[int] | None = None,
        candidates: Sequence[int] | None = None,
    ) -> int:
        """`cached[r]`: the sequence's tokens rank r holds or will hold (default none)."""
        ranks = range(self.dp_ranks) if candidates is None else candidates
        hit = cached if cached is not None else [0] * self.dp_ranks
        if self.policy == "balanced":
            return _balanced(counters, [tokens - h for h in hit], ranks, self.step_tokens)
        if self.policy == "least_load":
            return min(ranks, key=lambda r: (counters.tokens[r] + tokens - hit[r], r))
        if self.policy == "cache_first" and max(hit[r] for r in ranks) > 0:
            return min(ranks, key=lambda r: (-hit[r], counters.tokens[r], r))
        if self.policy in ("least_tokens", "cache_first"):
            return min(ranks, key=lambda r: (counters.tokens[r], r))
        return self._round_robin(ranks)

    def _round_robin(self, ranks: Sequence[int]) -> int:
        # The first candidate at or after the cursor, cyclically.
        rank = min(ranks, key=lambda r: ((r - self._next) % self.dp_ranks, r))
        self._next = (rank + 1) % self.dp_ranks
        return rank


def _balanced(counters: RankCounters, uncached: Sequence[int], ranks: Sequence[int], step_tokens: int) -> int:
    load = counters.load
    # The largest load among the *other* ranks: the top one, or the second
    # when the top one is the rank being tried.
    top = max(range(len(load)), key=lambda r: (load[r], -r))
    second = max((load[r] for r in range(len(load)) if r != top), default=0)

    def key(r: int) -> tuple[int, ...]:
        busiest = max(load[r] + uncached[r], second if r == top else load[top])
        return -(-busiest // step_tokens), uncached[r], load[r] + uncached[r], busiest, counters.seqs[r], r

    return min(ranks, key=key)
