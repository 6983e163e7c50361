"""From a model name to a config and a (possibly abstract) Flax model."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from shardspec.errors import ShardspecError, Source, clip, did_you_mean

from .config import DeepSeekConfig, LlamaConfig, MoEConfig
from .llama import Llama
from .mla import DeepSeek
from .moe import MoE
from .presets import PRESETS


def resolve_config(model: str | os.PathLike | LlamaConfig, where: Source | None = None) -> LlamaConfig:
    """A config object, a preset name, or a Hugging Face checkpoint directory.

    `where`: the strategy naming `model`, whose `model:` line (or `--model`) an
    unknown name is reported at.
    """
    if isinstance(model, LlamaConfig):
        return model
    if model in PRESETS:
        return PRESETS[model]
    if os.path.isdir(model):
        from .hf_config import config_from_dir

        return config_from_dir(model)
    message = f"unknown model {clip(os.fspath(model))}"
    hint = did_you_mean(model, PRESETS) or "see `shardspec models`, or give a checkpoint directory"
    if where is not None:
        raise where.error("model", message, hint)
    raise ShardspecError(message, path="model", hint=hint)


def model_class(config: LlamaConfig) -> type[Llama]:
    """The one place that picks a model class for a config."""
    if isinstance(config, DeepSeekConfig):
        return DeepSeek
    return MoE if isinstance(config, MoEConfig) else Llama


def build(config: LlamaConfig, *, dtype=jnp.float32, seed: int = 0) -> Llama:
    """A real model on the default device: the checkpoint's weights, else initialised with `seed`.

    Eager sharding is off: the logical axes are only metadata here; shardspec's
    plan, not Flax, decides where parameters live.
    """
    if config.checkpoint:
        from shardspec.checkpoint import load_state

        graphdef, state = nnx.split(abstract(config, dtype=dtype))
        return nnx.merge(graphdef, load_state(config, state))
    with nnx.use_eager_sharding(False):
        return model_class(config)(config, dtype=dtype, rngs=nnx.Rngs(seed))


def abstract(config: LlamaConfig, *, dtype=jnp.float32) -> Llama:
    """The model with ShapeDtypeStructs for parameters: no memory, any size, no tracing."""
    with nnx.use_eager_sharding(False):
        return model_class(config)(config, dtype=dtype, rngs=None)


def parameter_count(config: LlamaConfig) -> int:
    """Parameters of the model, from its abstract shapes (exact for every family, MoE included)."""
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(abstract(config))))
