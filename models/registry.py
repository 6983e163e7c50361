"""From a model name to a config and a (possibly abstract) Flax model."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from shardspec.errors import ShardspecError, did_you_mean

from .config import LlamaConfig
from .llama import Llama
from .presets import PRESETS


def resolve_config(model: str | LlamaConfig) -> LlamaConfig:
    if isinstance(model, LlamaConfig):
        return model
    if model in PRESETS:
        return PRESETS[model]
    raise ShardspecError(f"unknown model {model!r}", path="model",
                         hint=did_you_mean(model, PRESETS) or "see `shardspec models`")


def build(config: LlamaConfig, *, dtype=jnp.float32, seed: int = 0) -> Llama:
    """A real model with initialised parameters on the default device.

    Eager sharding is off: the logical axes are only metadata here; shardspec's
    plan, not Flax, decides where parameters live.
    """
    with nnx.use_eager_sharding(False):
        return Llama(config, dtype=dtype, rngs=nnx.Rngs(seed))


def abstract(config: LlamaConfig, *, dtype=jnp.float32) -> Llama:
    """The model with ShapeDtypeStructs for parameters: no memory, any size, no tracing."""
    with nnx.use_eager_sharding(False):
        return Llama(config, dtype=dtype, rngs=None)
