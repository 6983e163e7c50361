"""`apply()`: a model whose parameters live in the plan's shardings.

Parameters are created (or moved) straight into place: each device only ever
holds its own shard, never a full copy of a sharded tensor.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
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
        state = load_state(config, tree.abstract(), placements)
    else:
        state = _init_program(plan)(jax.random.key(seed))
    return nnx.merge(tree.graphdef, state)


_INIT_PROGRAMS: dict[tuple, Callable] = {}  # by the plan's program and the model's config: built once a process
_INIT_LOCK = threading.Lock()


def _init_program(plan: ShardingPlan) -> Callable:
    """The jitted initialisation of shardspec's own model of `plan`, from a PRNG key (an
    argument, so every seed runs one program): each device computes only its shards."""
    key = (plan.program_key, plan.model.config)
    with _INIT_LOCK:
        if key not in _INIT_PROGRAMS:
            _INIT_PROGRAMS[key] = jax.jit(functools.partial(_init, plan), out_shardings=plan.param_shardings())
        return _INIT_PROGRAMS[key]


def _init(plan: ShardingPlan, rng: jax.Array):
    from .models.registry import model_class

    config = plan.model.config
    with nnx.use_eager_sharding(False):
        model = model_class(config)(config, dtype=plan.dtype, rngs=nnx.Rngs(rng))
    values = [v.get_value() for v in jax.tree.leaves(nnx.state(model), is_leaf=_is_variable)]
    return plan.model.tree.rebuild(_padded(plan, values, jnp.pad))


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
