"""`check()`: the sharded model against the unsharded one, on one fixed batch.

Passes when greedy next tokens are identical at every position and logits
agree within a tolerance relative to the largest logit. `check_collectives()`
holds the compiled serving step to the strategy's `expect:` collective budget.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from .distributed import fetch, global_array
from .errors import ShardspecError
from .hlo import budget_summary, check_budget, hlo_report
from .models.registry import build
from .placement import apply
from .plan import ShardingPlan
from .protocol import Layout, ServableModel, dense_logits

# Relative logit tolerance per runtime dtype (× max(1, max |logit|)). Measured
# float32 differences on the presets are ~1e-6 relative: reduction order only.
RTOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    batch_shape: tuple[int, int]
    max_abs_diff: float
    tolerance: float
    worst: tuple[int, int, int]  # (sequence, position, vocab id) of the largest difference
    tokens_equal: int
    tokens_total: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.tokens_equal == self.tokens_total

    def summary(self) -> str:
        b, t, v = self.worst
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: batch {self.batch_shape[0]}×{self.batch_shape[1]} tokens; "
            f"greedy tokens identical at {self.tokens_equal}/{self.tokens_total} positions; "
            f"max |Δlogit| = {self.max_abs_diff:.2e} at sequence {b}, position {t}, token {v} "
            f"(tolerance {self.tolerance:.1e})"
        )


def check(
    plan: ShardingPlan, model: ServableModel | None = None, *, seed: int = 0, seq_len: int = 16, seqs_per_rank: int = 2
) -> CheckResult:
    """Run one random batch unsharded on one device and sharded under `plan`.

    The forward is the serving protocol's (`protocol.dense_logits`), so any servable
    model is checked: shardspec's own (built from its config with `seed`), or
    `model`, the outside module the plan was compiled from, whose own unsharded
    forward is the reference.
    """
    plan.servable_kv_cache()  # the protocol's forward needs a decoder (a ShardspecError if none)
    geometry = plan.model.geometry
    if model is None and plan.model.config is None:
        raise ShardspecError(f"check() needs the model {plan.model.name} itself: check(plan, model)", path="model")
    # At least 8 sequences, and a multiple of the DP ranks (as the runtime pads to).
    batch = plan.dp_ranks * max(seqs_per_rank, -(-8 // plan.dp_ranks))
    tokens = np.asarray(jax.random.randint(jax.random.key(seed + 1), (batch, seq_len), 0, geometry.vocab_size))
    forward = jax.jit(dense_logits, static_argnums=2)
    # Every process computes the same reference on one of its own devices.
    with jax.default_device(jax.local_devices()[0]):
        reference = build(plan.model.config, dtype=plan.dtype, seed=seed) if model is None else model
        want = np.asarray(forward(reference, jnp.asarray(tokens), Layout()))

    sharded = apply(plan, seed=seed) if model is None else apply(plan, model)
    token_sharding = plan.sharding(P(plan.token_axes))
    sharded_forward = jax.jit(lambda m, t: dense_logits(m, t, plan.layout), in_shardings=(None, token_sharding))
    got = fetch(sharded_forward(sharded, global_array(tokens, token_sharding)))

    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    same = int((got.argmax(-1) == want.argmax(-1)).sum())
    tolerance = RTOL[_least_precise(plan)] * max(1.0, float(np.abs(want).max()))
    return CheckResult(
        (batch, seq_len), float(diff.max()), tolerance, tuple(int(i) for i in worst), same, batch * seq_len
    )


def _least_precise(plan: ShardingPlan) -> str:
    """The runtime dtype of shardspec's models; an outside model's least precise float parameter."""
    if plan.model.config is not None:
        return plan.strategy.runtime.dtype
    floats = [p for p in plan.params if p.dtype in RTOL]
    return min(floats, key=lambda p: p.itemsize).dtype if floats else "float32"


def check_collectives(plan: ShardingPlan) -> str:
    """The strategy's `expect:` budget against the compiled decode and prefill steps.

    Returns a one-line summary; raises a ShardspecError naming each exceeded budget.
    """
    report = hlo_report(plan)
    check_budget(plan, report)
    return budget_summary(plan, report)
