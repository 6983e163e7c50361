"""`apply()`: a model whose parameters live in the plan's shardings.

Parameters are created (or moved) straight into place: each device only ever
holds its own shard, never a full copy of a sharded tensor.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import ShardspecError
from .param_tree import flatten_like
from .plan import ShardingPlan


def apply(plan: ShardingPlan, params: Any = None, *, seed: int = 0) -> Any:
    """The plan's model, sharded; returns the same kind of object it is given.

    With `params` (an NNX module, an nnx.State, Linen variables or a pytree: the
    model the plan was compiled from, as host or device arrays) each parameter is
    moved into its sharding, zero-padded where the plan pads, and the result has
    the caller's structure (a module for a module, a State for a State, ...).
    With `params=None` shardspec's own model is made in place: initialised inside
    one jitted program whose outputs carry the plan's shardings, so each device
    computes only its shard (JAX's partitionable RNG gives the same values as an
    unsharded init), or read shard by shard from its checkpoint (`checkpoint.py`).
    """
    if plan.is_abstract:
        raise ShardspecError("this plan was compiled on an abstract mesh; compile it with devices to apply it")
    if params is not None:
        values, rebuild = flatten_like(plan.model.tree, params, "apply()")
        return rebuild(_place(plan, values, np.pad))
    config = plan.model.config
    if config is None:
        raise ShardspecError(
            f"apply() needs the parameters of {plan.model.name}",
            path="params",
            hint="shardspec can initialise only its own models: apply(plan, params)",
        )
    if config.shape_only:
        raise ShardspecError(
            f"model {plan.model.name!r} is shape-only: explain and validate it, do not materialise it", path="model"
        )
    tree = plan.model.tree
    if config.checkpoint:
        from .checkpoint import load_state

        placements = {p.path: (plan.sharding(p.spec), p.stored_shape) for p in plan.params}
        state = load_state(config, tree.abstract(), plan.dtype, placements)
    else:
        from .models.registry import model_class

        shardings = plan.param_shardings()

        def init():
            with nnx.use_eager_sharding(False):
                model = model_class(config)(config, dtype=plan.dtype, rngs=nnx.Rngs(seed))
            values = [v.get_value() for v in jax.tree.leaves(nnx.state(model), is_leaf=_is_variable)]
            return tree.rebuild(_padded(plan, values, jnp.pad))

        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(tree.graphdef, state)


def _place(plan: ShardingPlan, values: list, pad) -> list:
    """Each value padded as the plan stores it and put into its sharding (only its shard per device)."""
    return [jax.device_put(v, plan.sharding(p.spec)) for v, p in zip(_padded(plan, values, pad), plan.params)]


def _padded(plan: ShardingPlan, values: list, pad) -> list:
    """Zero-pad parameters the plan stores larger (policy.indivisible: pad)."""
    out = []
    for value, layout in zip(values, plan.params):
        if layout.stored_shape != tuple(np.shape(value)):
            value = pad(value, [(0, s - v) for s, v in zip(layout.stored_shape, np.shape(value))])
        out.append(value)
    return out


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)
