"""What `compile()` knows about the model: its parameters, its geometry, and where it came from.

shardspec's own models (a preset, a config, a checkpoint directory) are read
exactly like an outside one: the abstract NNX module is built and its
parameter tree and `decoder_geometry()` are read through the same functions.
They only add a `config`, which lets `apply` initialise them or load their
checkpoint, and `check` build an unsharded reference.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx

from . import param_tree
from .errors import ShardspecError, Source
from .models.axes import ZERO_PADDABLE
from .models.config import LlamaConfig, MoEConfig
from .protocol import DecoderGeometry, ServableModel


@dataclasses.dataclass(frozen=True, eq=False)
class ModelInfo:
    name: str  # "llama3-tiny", a checkpoint directory, or the caller's class ("GPT2", "Linen variables")
    tree: param_tree.ParamTree
    geometry: DecoderGeometry | None  # None: not a decoder the runtime can page (no KV cache)
    kv_heads: int | None  # for `attention_data: auto` (the geometry's, or compile(kv_heads=))
    paddable: frozenset[str] = frozenset()  # logical axes zero-padding keeps exact (policy.indivisible: pad)
    config: LlamaConfig | None = None  # shardspec's own model: apply can initialise or load it

    @property
    def checkpoint(self) -> str | None:
        """The Hugging Face directory the weights (and tokenizer) come from, if any."""
        return self.config.checkpoint if self.config is not None else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.config.eos_token_ids if self.config is not None else ()

    @property
    def experts_per_token(self) -> int | None:
        return self.config.experts_per_token if isinstance(self.config, MoEConfig) else None

    def __repr__(self) -> str:
        return f"ModelInfo({self.name!r}, {len(self.tree.leaves)} parameters)"


def is_own_model(model: Any) -> bool:
    """A preset name, a config or a checkpoint directory (shardspec builds the module)."""
    return isinstance(model, (str, os.PathLike, LlamaConfig))


def own_model(model: str | os.PathLike | LlamaConfig, dtype, where: Source | None = None) -> ModelInfo:
    """`where`: the strategy that names `model`, to locate an unknown name at its `model:` (or `--model`)."""
    from .models.registry import abstract, resolve_config

    config = resolve_config(model, where)
    module = abstract(config, dtype=dtype)
    name = (
        model
        if isinstance(model, str)
        else os.fspath(model)
        if isinstance(model, os.PathLike)
        else (config.checkpoint or config.family)
    )
    geometry = module.decoder_geometry()
    return ModelInfo(name, param_tree.read(module), geometry, geometry.num_kv_heads, ZERO_PADDABLE, config)


def outside_model(model: Any, *, axes=None, kv_heads: int | None = None, paddable=()) -> ModelInfo:
    """An nnx.Module or State, Linen variables, or a pytree with `axes=` (see `param_tree`).

    `paddable`: the model's logical axes whose zero-padding keeps its outputs exact
    (none is assumed: only the model's author knows).
    """
    tree = param_tree.read(model, axes)
    geometry = model.decoder_geometry() if isinstance(model, nnx.Module) and isinstance(model, ServableModel) else None
    if geometry is not None and not isinstance(geometry, DecoderGeometry):
        raise ShardspecError(
            f"{type(model).__name__}.decoder_geometry() returned {type(geometry).__name__}",
            path="model",
            hint="return a shardspec.protocol.DecoderGeometry",
        )
    if kv_heads is not None:
        if not isinstance(kv_heads, int) or isinstance(kv_heads, bool) or kv_heads < 1:
            raise ShardspecError(f"kv_heads={kv_heads!r} is not a positive int", path="kv_heads")
        if geometry is not None and kv_heads != geometry.num_kv_heads:
            raise ShardspecError(
                f"kv_heads={kv_heads} but the model's geometry has {geometry.num_kv_heads} KV heads",
                path="kv_heads",
                hint="leave kv_heads= out: the model's decoder_geometry() gives it",
            )
    name = (
        type(model).__name__
        if isinstance(model, nnx.Module)
        else {param_tree.NNX: "nnx.State", param_tree.LINEN: "Linen variables"}.get(tree.kind, "pytree")
    )
    if isinstance(paddable, str) or not all(isinstance(a, str) for a in paddable):
        raise ShardspecError(f"paddable={paddable!r} is not a collection of logical names", path="paddable")
    return ModelInfo(
        name,
        tree,
        geometry,
        kv_heads if kv_heads is not None else (geometry.num_kv_heads if geometry else None),
        frozenset(paddable),
    )
