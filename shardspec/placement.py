"""`apply()`: a model whose parameters live in the plan's shardings.

Parameters are created (or moved) straight into place: each device only ever
holds its own shard, never a full copy of a sharded tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import ShardspecError
from .models.llama import Llama
from .models.registry import model_class
from .plan import ShardingPlan


def apply(plan: ShardingPlan, params: nnx.State | None = None, *, seed: int = 0) -> Llama:
    """The plan's model, sharded.

    With `params=None` the parameters are initialised inside one jitted program
    whose outputs carry the plan's shardings, so each device computes only its
    shard (JAX's partitionable RNG gives the same values as an unsharded init);
    a model compiled from a checkpoint directory instead reads each device's
    shard from the safetensors files (`checkpoint.py`).
    With `params` (a parameter State of host or device arrays) they are moved
    into the shardings, padded where the plan pads.
    """
    if plan.is_abstract:
        raise ShardspecError("this plan was compiled on an abstract mesh; compile it with devices to apply it")
    if plan.model.shape_only:
        raise ShardspecError(f"model {plan.strategy.model!r} is shape-only: explain and validate it, "
                             "do not materialise it", path="model")
    shardings = plan.param_shardings()
    if params is None and plan.model.checkpoint:
        from .checkpoint import load_state

        placements = {p.path: (plan.sharding(p.spec), p.stored_shape) for p in plan.params}
        state = load_state(plan.model, plan.abstract_state, plan.dtype, placements)
    elif params is None:
        def init():
            with nnx.use_eager_sharding(False):
                model = model_class(plan.model)(plan.model, dtype=plan.dtype, rngs=nnx.Rngs(seed))
            return _pad(nnx.state(model), plan, jnp.pad)

        state = jax.jit(init, out_shardings=shardings)()
    else:
        state = jax.device_put(_pad(params, plan, np.pad), shardings)
    return nnx.merge(plan.graphdef, state)


def _pad(state: nnx.State, plan: ShardingPlan, pad) -> nnx.State:
    """Zero-pad parameters the plan stores larger (policy.indivisible: pad)."""
    layouts = {p.path: p for p in plan.params}

    def one(key, var):
        layout = layouts[".".join(str(k) for k in key)]
        value = var.get_value()
        if layout.stored_shape != tuple(value.shape):
            widths = [(0, s - v) for s, v in zip(layout.stored_shape, value.shape)]
            value = pad(value, widths)
        return key, var.replace(value)

    return nnx.from_flat_state([one(k, v) for k, v in nnx.to_flat_state(state)])
