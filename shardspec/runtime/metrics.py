"""Run metrics (DESIGN §4): what a step cost and how well the DP ranks were used."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Metrics:
    dp_ranks: int
    steps: int = 0
    real_tokens: int = 0  # tokens that belonged to a request
    computed_tokens: int = 0  # tokens the device computed, padding included
    generated_tokens: int = 0
    host_seconds: float = 0.0  # scheduling, packing and bookkeeping on the host
    wall_seconds: float = 0.0
    compiles: int = 0
    max_kv_usage: float = 0.0  # the fullest rank's page pool, at its fullest
    preemptions: int = 0
    failed_steps: int = 0  # steps that raised: their requests finished as "error"
    rank_tokens: np.ndarray | None = None  # tokens each rank computed, summed over steps
    # Per rank, over admissions: prompt tokens taken from the prefix cache, and computed
    # (with what preempted sequences recompute); the scheduler counts them.
    rank_cached_prompt_tokens: tuple[int, ...] = ()
    rank_computed_prompt_tokens: tuple[int, ...] = ()
    step_costs_ms: dict[int, float] | None = None  # the step-time model, per token bucket, where known
    step_costs_source: str | None = None  # "measured" (at warm-up) or "strategy"

    def __post_init__(self):
        if self.rank_tokens is None:
            self.rank_tokens = np.zeros(self.dp_ranks, np.int64)

    def record_step(self, real: int, computed: int, per_rank: np.ndarray) -> None:
        self.steps += 1
        self.real_tokens += real
        self.computed_tokens += computed
        self.rank_tokens += per_rank

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
    def prefix_hit_rate(self) -> float:
        """Prompt tokens taken from the cache ÷ prompt tokens admitted."""
        return _hit_rate(self.cached_prompt_tokens, self.computed_prompt_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds else 0.0

    def to_json(self) -> dict:
        return {
            "tokens_per_s": round(self.tokens_per_second, 2),
            "generated_tokens": self.generated_tokens,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "real_tokens": self.real_tokens,
            "computed_tokens": self.computed_tokens,
            "per_rank_tokens": self.rank_tokens.tolist(),
            "max_kv_usage": round(self.max_kv_usage, 4),
            "preemptions": self.preemptions,
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
            "host_overhead_fraction": round(self.host_seconds / self.wall_seconds, 4) if self.wall_seconds else 0.0,
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


def _hit_rate(cached: int, computed: int) -> float:
    return cached / (cached + computed) if cached + computed else 0.0
