"""Run metrics (DESIGN §4): what the steps cost and how well the DP ranks were used.

`Metrics` is a value: the step loop makes a new one after each step
(`stepped`), and whoever reads it (`run --json`, `/metrics`, tests) holds a
snapshot that no later step changes.

Host time is split by what the device does meanwhile. `host_seconds` is the
host's own work on steps (scheduling, packing, taking the samples), not the
dispatch and not the time spent waiting for the device. `exposed_host_seconds`
is the part of it the device did not overlap: all of it with synchronous
steps; with async scheduling, the work done while the device had no step to
run (it had finished the one in flight before the host handed it the next).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """What one step of the loop cost and did."""

    real_tokens: int  # tokens that belonged to a request
    computed_tokens: int  # tokens the device computed, padding included
    rank_tokens: np.ndarray  # int [R] real tokens per rank
    generated_tokens: int  # tokens of the requests that finished in it
    host_seconds: float
    exposed_host_seconds: float
    wall_seconds: float
    failed_steps: int  # steps that raised during it (one launched, or one collected)


@dataclasses.dataclass(frozen=True)
class Metrics:
    dp_ranks: int
    steps: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    host_seconds: float = 0.0  # the host's work on steps (see the module doc)
    exposed_host_seconds: float = 0.0  # ... that the device did not overlap
    wall_seconds: float = 0.0
    compiles: int = 0  # step programs compiled for this plan in this process (one per token bucket run)
    max_kv_usage: float = 0.0  # the fullest rank's page pool, at its fullest
    preemptions: int = 0
    failed_steps: int = 0  # steps that raised: their requests finished as "error"
    rank_tokens: tuple[int, ...] = ()  # tokens each rank computed, summed over steps
    # Per rank, over admissions: prompt tokens taken from the prefix cache, and computed
    # (with what preempted sequences recompute); the scheduler counts them.
    rank_cached_prompt_tokens: tuple[int, ...] = ()
    rank_computed_prompt_tokens: tuple[int, ...] = ()
    rank_recomputed_tokens: tuple[int, ...] = ()  # of those, what preempted sequences had computed before
    step_costs_ms: Mapping[int, float] | None = None  # the step-time model, per token bucket, where known
    step_costs_source: str | None = None  # "measured" (at warm-up) or "strategy"

    def __post_init__(self):
        for name in (
            "rank_tokens",
            "rank_cached_prompt_tokens",
            "rank_computed_prompt_tokens",
            "rank_recomputed_tokens",
        ):
            if not getattr(self, name):
                object.__setattr__(self, name, (0,) * self.dp_ranks)

    def stepped(self, step: StepRecord, scheduler_stats: Mapping, compiles: int) -> Metrics:
        """These metrics after one more step (`scheduler_stats`: `DPScheduler.stats()` after it)."""
        launched = step.computed_tokens > 0
        return dataclasses.replace(
            self,
            steps=self.steps + launched,
            real_tokens=self.real_tokens + step.real_tokens,
            computed_tokens=self.computed_tokens + step.computed_tokens,
            generated_tokens=self.generated_tokens + step.generated_tokens,
            host_seconds=self.host_seconds + step.host_seconds,
            exposed_host_seconds=self.exposed_host_seconds + step.exposed_host_seconds,
            wall_seconds=self.wall_seconds + step.wall_seconds,
            compiles=compiles,
            max_kv_usage=max(self.max_kv_usage, scheduler_stats["max_kv_usage"]),
            preemptions=scheduler_stats["preemptions"],
            failed_steps=self.failed_steps + step.failed_steps,
            rank_tokens=tuple((np.asarray(self.rank_tokens) + step.rank_tokens).tolist())
            if launched
            else self.rank_tokens,
            rank_cached_prompt_tokens=tuple(scheduler_stats["cached_tokens"]),
            rank_computed_prompt_tokens=tuple(scheduler_stats["prefill_tokens"]),
            rank_recomputed_tokens=tuple(scheduler_stats["recomputed_tokens"]),
        )

    @property
    def padding_efficiency(self) -> float:
        """Real ÷ computed tokens over the run (1.0 = no padding)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0

    @property
    def cached_prompt_tokens(self) -> int:
        return sum(self.rank_cached_prompt_tokens)

    @property
    def computed_prompt_tokens(self) -> int:
        return sum(self.rank_computed_prompt_tokens)

    @property
    def recomputed_tokens(self) -> int:
        return sum(self.rank_recomputed_tokens)

    @property
    def prefix_hit_rate(self) -> float:
        """Prompt tokens taken from the cache ÷ prompt tokens admitted."""
        return _hit_rate(self.cached_prompt_tokens, self.computed_prompt_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds else 0.0

    def to_json(self) -> dict:
        """`run --json`'s object."""
        return {
            "tokens_per_s": round(self.tokens_per_second, 2),
            "generated_tokens": self.generated_tokens,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "real_tokens": self.real_tokens,
            "computed_tokens": self.computed_tokens,
            "per_rank_tokens": list(self.rank_tokens),
            "max_kv_usage": round(self.max_kv_usage, 4),
            "preemptions": self.preemptions,
            "recomputed_tokens": self.recomputed_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "computed_prompt_tokens": self.computed_prompt_tokens,
            "prefix_hit_rate": round(self.prefix_hit_rate, 4),
            "per_rank_cached_prompt_tokens": list(self.rank_cached_prompt_tokens),
            "per_rank_computed_prompt_tokens": list(self.rank_computed_prompt_tokens),
            "per_rank_prefix_hit_rate": [
                round(_hit_rate(c, n), 4)
                for c, n in zip(self.rank_cached_prompt_tokens, self.rank_computed_prompt_tokens)
            ],
            "failed_steps": self.failed_steps,
            "compiles": self.compiles,
            "steps": self.steps,
            "host_overhead_fraction": _fraction(self.exposed_host_seconds, self.wall_seconds),
            "host_work_fraction": _fraction(self.host_seconds, self.wall_seconds),
            "wall_s": round(self.wall_seconds, 3),
            **(
                {
                    "step_costs_ms": {str(k): v for k, v in self.step_costs_ms.items()},
                    "step_costs": self.step_costs_source,
                }
                if self.step_costs_ms
                else {}
            ),
        }


def _fraction(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def _hit_rate(cached: int, computed: int) -> float:
    return cached / (cached + computed) if cached + computed else 0.0
