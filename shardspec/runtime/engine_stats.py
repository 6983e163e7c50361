"""`EngineStats`: a snapshot of an engine, what the server's gauges and `run` read.

A value taken under the engine's lock (`Engine.stats()`): what each DP rank
holds now and the run's metrics so far. Nothing in it changes afterwards, and
nothing outside the engine reads the scheduler itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .metrics import Metrics


@dataclasses.dataclass(frozen=True)
class EngineStats:
    running: tuple[int, ...]  # per DP rank: sequences in a slot
    waiting: tuple[int, ...]  # per DP rank: sequences waiting to be admitted
    pages_used: tuple[int, ...]  # per DP rank: KV pages held by sequences
    pages_cached: tuple[int, ...]  # per DP rank: pages holding a prefix key (held or idle)
    pages_per_rank: int
    metrics: Metrics  # the run so far (`run --json`)

    @classmethod
    def of(cls, scheduler_stats: Mapping, pages_per_rank: int, metrics: Metrics) -> EngineStats:
        """From `DPScheduler.stats()` and the step loop's metrics."""
        s = scheduler_stats
        return cls(
            tuple(s["running"]), tuple(s["waiting"]), tuple(s["pages_used"]), tuple(s["pages_cached"]),
            pages_per_rank, metrics,
        )  # fmt: skip

    @property
    def kv_usage(self) -> tuple[float, ...]:
        """Per DP rank: pages used ÷ pages per rank."""
        return tuple(used / self.pages_per_rank for used in self.pages_used)

    @property
    def kv_usage_max(self) -> float:
        """The fullest rank's usage now (a mean would hide one full rank)."""
        return max(self.kv_usage)
