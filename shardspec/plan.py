"""`compile()`: Strategy + model shapes -> ShardingPlan, the single source of truth.

Every derived size (DP ranks, attention-TP size, KV-head replication, pages per
rank) is computed here once; explain, apply, check and the runtime read it and
never recompute it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import mesh as mesh_lib
from . import rules as rules_lib
from .errors import ShardspecError, raise_all
from .load import load
from .models import axes as ax
from .models.config import LlamaConfig
from .models.llama import Layout
from .models.registry import abstract, resolve_config
from .strategy import Strategy

CPU_PAGES_PER_RANK = 256  # `num_pages: auto` on CPU: 4,096 tokens a rank at page_size 16

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
           "float8_e4m3fn": jnp.float8_e4m3fn}


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    path: str  # "layers.0.self_attn.q_proj"
    shape: tuple[int, ...]  # the model's shape
    stored_shape: tuple[int, ...]  # after policy padding (== shape unless padded)
    dtype: str
    axes: tuple[str | None, ...]  # logical axes
    spec: P
    bytes_per_device: int
    notes: tuple[str, ...]  # policy fallbacks, KV-head replication
    axes_from: str | None = None  # "params[0]" when a `params:` override set the axes

    @property
    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * jnp.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class KVCacheLayout:
    """One array per layer for K and one for V: [pages, page_size, kv slots, head_dim]."""

    spec: P
    kv_heads: int  # the model's KV heads
    slots: int  # KV heads as stored: kv_heads × repeat
    replication: int  # devices of one tensor group holding each KV head
    page_size: int
    pages_per_rank: int
    dtype: str
    bytes_per_page_per_device: int  # K and V, all layers

    def bytes_per_device(self, pages_per_rank: int | None = None) -> int:
        return self.bytes_per_page_per_device * (pages_per_rank or self.pages_per_rank)


@dataclasses.dataclass(frozen=True)
class RuntimeSizes:
    """Every size the scheduler, packer, KV cache and step share, computed once."""

    dp_ranks: int
    page_size: int
    pages_per_rank: int
    max_pages_per_seq: int  # ceil(max_model_len / page_size): columns of a block table
    max_model_len: int  # longest prompt + output
    max_num_seqs: int  # running sequences per DP rank
    max_num_batched_tokens: int  # tokens per DP rank per step
    token_buckets: tuple[int, ...]  # per-rank token strides a step is padded to (ascending)

    @property
    def max_request_len(self) -> int:
        """Longest prompt + max_tokens served: the model's limit, or one rank's pages
        (+1: the last sampled token is never written to the cache)."""
        return min(self.max_model_len, self.pages_per_rank * self.page_size + 1)

    def token_stride(self, busiest_rank_tokens: int) -> int:
        """The smallest bucket that holds the busiest rank's tokens."""
        return next(b for b in self.token_buckets if b >= busiest_rank_tokens)

    def request_stride(self, token_stride: int) -> int:
        """Rows per rank for per-request arrays: every request has >= 1 token in the step."""
        return min(token_stride, self.max_num_seqs)


def token_buckets(max_tokens: int, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_tokens`, which is always the last."""
    out, b = [], min(smallest, max_tokens)
    while b < max_tokens:
        out.append(b)
        b *= 2
    return (*out, max_tokens)


@dataclasses.dataclass(frozen=True, eq=False)
class ShardingPlan:
    strategy: Strategy
    model: LlamaConfig
    mesh: Mesh | AbstractMesh
    mesh_shape: Mapping[str, int]
    attention_data: int
    attention_data_why: str
    rules: Mapping[str, rules_lib.Rule]
    params: tuple[ParamLayout, ...]
    activations: Mapping[str, P]
    kv_cache: KVCacheLayout
    graphdef: nnx.GraphDef  # the model's structure, for apply()
    abstract_state: nnx.State  # parameter ShapeDtypeStructs (model shapes)

    @property
    def runtime(self) -> RuntimeSizes:
        rt, kv = self.strategy.runtime, self.kv_cache
        return RuntimeSizes(
            dp_ranks=self.dp_ranks, page_size=kv.page_size, pages_per_rank=kv.pages_per_rank,
            max_pages_per_seq=-(-self.model.max_seq_len // kv.page_size),
            max_model_len=self.model.max_seq_len, max_num_seqs=rt.max_num_seqs,
            max_num_batched_tokens=rt.max_num_batched_tokens,
            token_buckets=token_buckets(rt.max_num_batched_tokens))

    @property
    def dp_ranks(self) -> int:
        """Ranks that each own requests and KV pages: data × attn_dp."""
        return self.mesh_shape["data"] * self.mesh_shape["attn_dp"]

    @property
    def attn_tp(self) -> int:
        """Devices that split one rank's attention heads."""
        return self.mesh_shape["model"]

    @property
    def kv_repeat(self) -> int:
        """How often the forward repeats each KV head (1 unless model > kv_heads)."""
        return self.kv_cache.slots // self.kv_cache.kv_heads

    @property
    def dtype(self):
        return _DTYPES[self.strategy.runtime.dtype]

    @property
    def is_abstract(self) -> bool:
        return not isinstance(self.mesh, Mesh)

    def param(self, path: str) -> ParamLayout:
        return next(p for p in self.params if p.path == path)

    def param_specs(self) -> nnx.State:
        """PartitionSpec tree shaped like the model's parameter state."""
        specs = {p.path: p.spec for p in self.params}
        flat = nnx.to_flat_state(self.abstract_state)
        return nnx.from_flat_state([(k, v.replace(specs[_dotted(k)])) for k, v in flat])

    def param_shardings(self) -> nnx.State:
        return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec), self.param_specs())

    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def constrain(self, x: jax.Array, name: str) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, self.activations[name]))

    @property
    def layout(self) -> Layout:
        """What the model's forward needs from the plan, passed explicitly."""
        return Layout(constrain=self.constrain, kv_repeat=self.kv_repeat)


def _dotted(path: Sequence) -> str:
    return ".".join(str(k) for k in path)


def compile(strategy: Strategy | str | os.PathLike, model: str | LlamaConfig | None = None, *,
            devices: Sequence[jax.Device] | None = None, abstract_mesh: bool = False) -> ShardingPlan:
    """Compile a strategy against a model's abstract shapes.

    `model` (or the strategy's `model:`) is a preset name, a config, or a
    Hugging Face checkpoint directory, whose tensors are checked here.

    `abstract_mesh=True` builds the plan on an AbstractMesh: every check runs and
    nothing touches a device (validate, explain). Otherwise the mesh is built on
    `devices` (default: all devices, whose count must match the strategy).
    """
    if not isinstance(strategy, Strategy):
        strategy = load(strategy)
    if model is None and strategy.model is None:
        raise ShardspecError("no model given", path="model", file=strategy.source.file,
                             hint="set model: in the strategy or pass --model (see `shardspec models`)")
    config = resolve_config(model if model is not None else strategy.model)
    attention_data, why = strategy.resolve_attention_data(config.num_kv_heads)
    shape = mesh_lib.mesh_shape(strategy, attention_data)
    table = rules_lib.rule_table(strategy)

    abstract_model = abstract(config, dtype=_DTYPES[strategy.runtime.dtype])
    graphdef, state = nnx.split(abstract_model)
    if config.checkpoint:  # file headers only: every tensor there, with its shape, before any device work
        from .checkpoint import check as check_checkpoint

        check_checkpoint(config, state)
    params, problems = _param_layouts(state, strategy, table, shape)
    activations, act_problems = _activation_specs(strategy, table, shape)
    raise_all(problems + act_problems)

    if abstract_mesh:
        mesh = mesh_lib.abstract_mesh(shape)
    else:
        mesh = mesh_lib.device_mesh(shape, strategy, devices)
    param_bytes = sum(p.bytes_per_device for p in params)
    kv = _kv_cache_layout(strategy, table, shape, config, _free_device_bytes(mesh, param_bytes))
    return ShardingPlan(strategy, config, mesh, shape, attention_data, why, table, tuple(params),
                        activations, kv, graphdef, state)


def _param_layouts(state, strategy, table, shape):
    overrides = [(o, re.compile(o.match)) for o in strategy.params]
    layouts, problems = [], []
    for key, var in nnx.to_flat_state(state):
        path, value = _dotted(key), var.get_value()
        axes = tuple(var.get_metadata().get("out_sharding") or (None,) * value.ndim)
        axes_from = None
        for o, regex in overrides:
            if regex.search(path):
                if len(o.axes) != value.ndim:
                    problems.append(strategy.source.problem(
                        f"params[{o.index}].axes", f"{path} has {value.ndim} dims but {len(o.axes)} axes were given",
                        f"give one logical axis (or null) per dim of shape {tuple(value.shape)}"))
                    break
                axes, axes_from = o.axes, f"params[{o.index}]"
                break
        res, found = rules_lib.resolve_array(path, value.shape, axes, table=table, mesh_shape=shape,
                                             strategy=strategy, axes_from=axes_from)
        problems += found
        notes = res.notes + (("KV heads replicated over model",) if res.kv_replicated else ())
        layouts.append(ParamLayout(
            path, tuple(value.shape), res.padded_shape, jnp.dtype(value.dtype).name, axes, res.spec,
            rules_lib.bytes_per_device(res.padded_shape, res.spec, shape, jnp.dtype(value.dtype).itemsize),
            notes, axes_from))
    return layouts, _dedupe(problems)


def _dedupe(problems):
    """One problem per (location, message without the parameter path): layers repeat."""
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message.partition(": ")[2] or p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _activation_specs(strategy, table, shape):
    specs, problems = {}, []
    for name, logical in ax.ACTIVATIONS.items():
        entries, used = [], {}
        for axis in logical:
            rule = table.get(axis) if axis else None
            mesh = rules_lib.effective_axes(rule.mesh_axes, shape) if rule else ()
            problems += rules_lib.claim_axes(f"activation {name!r}", axis, mesh, used, table, strategy.source)
            entries.append(rules_lib.spec_entry(mesh))
        specs[name] = P(*entries)
    return specs, _dedupe(problems)


KV_MEMORY_FRACTION = 0.9  # `num_pages: auto` on accelerators: this share of what parameters leave


def _free_device_bytes(mesh, param_bytes: int) -> int | None:
    """Device memory left for KV pages on an accelerator; None on CPU or an abstract mesh."""
    if not isinstance(mesh, Mesh):
        return None
    device = mesh.devices.flat[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if not stats or "bytes_limit" not in stats:
        return None
    return int((stats["bytes_limit"] - stats.get("bytes_in_use", 0) - param_bytes) * KV_MEMORY_FRACTION)


def _kv_cache_layout(strategy, table, shape, config, free_bytes: int | None) -> KVCacheLayout:
    kv_axes = rules_lib.effective_axes(table[ax.KV_HEADS].mesh_axes, shape)
    kv_shards = math.prod(shape[a] for a in kv_axes)
    kv = config.num_kv_heads
    slots = kv if kv % kv_shards == 0 else math.lcm(kv, kv_shards)
    pages = rules_lib.spec_entry(rules_lib.effective_axes(table[ax.KV_PAGES].mesh_axes, shape))
    spec = P(pages, None, rules_lib.spec_entry(kv_axes), None)
    cfg = strategy.kv_cache
    per_page = (2 * config.num_layers * cfg.page_size * (slots // kv_shards) * config.head_dim
                * jnp.dtype(_DTYPES[cfg.dtype]).itemsize)
    if cfg.num_pages != "auto":
        pages_per_rank = int(cfg.num_pages)
    elif free_bytes is None:
        pages_per_rank = CPU_PAGES_PER_RANK
    else:
        pages_per_rank = max(1, free_bytes // per_page)
    # Copies of each KV head in one tensor group: repeated slots × model devices per slot.
    replication = (slots // kv) * max(1, shape["model"] // kv_shards)
    return KVCacheLayout(spec, kv, slots, replication, cfg.page_size, pages_per_rank, cfg.dtype, per_page)
