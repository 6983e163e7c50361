"""`compile()`: Strategy + a model's abstract shapes -> ShardingPlan, the single source of truth.

Every derived size (DP ranks, attention-TP size, KV-head replication, pages per
rank) is computed here once; explain, apply, check and the runtime read it and
never recompute it. The model may be shardspec's own (a preset, a config, a
checkpoint directory) or anyone's (`param_tree`): the plan follows the
caller's tree and never materialises it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import layouts as layouts_lib
from . import mesh as mesh_lib
from . import rules as rules_lib
from .errors import ShardspecError, raise_all
from .layouts import KVCacheLayout, ParamLayout
from .load import load
from .model_factory import load_factory, names_a_factory
from .model_info import ModelInfo, is_own_model, outside_model, own_model
from .per_shard import per_shard
from .protocol import Layout
from .sizes import RuntimeSizes, device_count, dp_ranks
from .strategy import Strategy

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float8_e4m3fn": jnp.float8_e4m3fn}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ShardingPlan:
    strategy: Strategy
    model: ModelInfo  # the model's parameter tree, decoder geometry and origin
    mesh: Mesh | AbstractMesh
    mesh_shape: Mapping[str, int]
    attention_data: int
    attention_data_why: str
    rules: Mapping[str, rules_lib.Rule]
    params: tuple[ParamLayout, ...]  # in the order of the model's tree
    activations: Mapping[str, P]  # the runtime's named activation points
    kv_cache: KVCacheLayout | None  # None: the model declares no decoder geometry
    runtime: RuntimeSizes | None  # every size the serving runtime shares; None with no KV cache
    token_axes: str | tuple[str, ...] | None  # the spec entry that splits tokens and pages over DP ranks
    unused_rules: tuple[str, ...] = ()  # rules: names the model does not use (explain warns)

    def __repr__(self) -> str:
        shape = "×".join(str(n) for n in self.mesh_shape.values())
        return (
            f"ShardingPlan({self.strategy.name!r}, model={self.model.name!r}, mesh={shape}, {len(self.params)} params)"
        )

    def servable_kv_cache(self) -> KVCacheLayout:
        """The KV cache layout; a ShardspecError for a model the runtime cannot serve."""
        if self.kv_cache is None:
            raise ShardspecError(
                f"model {self.model.name} declares no decoder geometry, so it has no KV cache to serve with",
                path="model",
                hint="implement shardspec.protocol.ServableModel (decoder_geometry, "
                "hidden_states, logits) and compile the plan from the module",
            )
        return self.kv_cache

    def for_servable(self, adapter) -> ShardingPlan:
        """This plan for a servable adapter of the model it was compiled from (a library's model
        with no decoder geometry): the same strategy and devices, the adapter's geometry. The
        adapter's parameters must be the model's (the same paths and shapes), so the layout of
        every parameter is the one this plan shows. ShardspecError naming the first difference."""
        if self.kv_cache is not None:
            return self
        info = outside_model(adapter, paddable=tuple(self.model.paddable))
        if info.geometry is None:
            self.servable_kv_cache()  # the error that says what a servable model implements
        theirs = {self.model.tree.path(leaf): leaf.shape for leaf in self.model.tree.leaves}
        ours = {info.tree.path(leaf): leaf.shape for leaf in info.tree.leaves}
        if theirs != ours:
            path = next(p for p in sorted(theirs.keys() | ours.keys()) if theirs.get(p) != ours.get(p))
            raise ShardspecError(
                f"the adapter's parameter {path!r} is {ours.get(path, 'missing')}; "
                f"the plan's model has {theirs.get(path, 'none')}",
                path="model",
                hint="an adapter holds the library's parameters as they are; or compile the plan from the adapter",
            )
        devices = None if self.is_abstract else list(self.mesh.devices.flat)
        return build_plan(self.strategy, info, devices=devices, abstract_mesh=self.is_abstract)

    @functools.cached_property
    def program_key(self) -> tuple:
        """What this plan's compiled programs depend on: equal keys, equal programs. The
        plan is a function of the strategy, the model's parameters and the devices (and of
        the device memory free when `num_pages: auto` sized the KV cache). The strategy's
        `auto`s count as what they resolved to (`attention_data: auto` and the explicit 4
        it resolves to compile to one program; `num_pages: auto` as the pages it gave), and
        its rules as the table they resolved to (a default written out is the default)."""
        s, model = self.strategy.program_view(), self.model
        parallelism = dataclasses.replace(s.parallelism, attention_data=self.attention_data)
        rules = {name: rule.mesh_axes for name, rule in self.rules.items()}
        s = dataclasses.replace(s, devices=self.device_count, parallelism=parallelism, rules=rules)
        if self.kv_cache is not None:  # a decoder: its KV cache and sizes resolved too
            kv = dataclasses.replace(s.kv_cache, dtype=self.kv_cache.dtype, num_pages=self.kv_cache.pages_per_rank)
            runtime = dataclasses.replace(s.runtime, max_model_len=self.runtime.max_model_len)
            s = dataclasses.replace(s, kv_cache=kv, runtime=runtime)
        return s, self.mesh, self.params, model.geometry, model.paddable

    @property
    def device_count(self) -> int:
        return device_count(self.mesh_shape)

    @property
    def dp_ranks(self) -> int:
        """Ranks that each own requests and KV pages: data × attn_dp."""
        return dp_ranks(self.mesh_shape)

    @property
    def attn_tp(self) -> int:
        """Devices that split one rank's attention heads."""
        return self.mesh_shape["model"]

    @property
    def kv_repeat(self) -> int:
        """How often the forward repeats each KV head (1 unless model > kv_heads)."""
        return 1 if self.kv_cache is None else self.kv_cache.slots // self.kv_cache.kv_heads

    @property
    def dtype(self):
        return _DTYPES[self.strategy.runtime.dtype]

    @property
    def is_abstract(self) -> bool:
        return not isinstance(self.mesh, Mesh)

    def param(self, path: str) -> ParamLayout:
        found = next((p for p in self.params if p.path == path), None)
        if found is None:
            raise KeyError(path)
        return found

    def param_specs(self):
        """PartitionSpecs shaped like the caller's tree: an nnx.State for NNX (Variables
        holding specs), the same nested dict for Linen variables and pytrees."""
        return self.model.tree.rebuild([p.spec for p in self.params], unbox=True)

    def param_shardings(self):
        """NamedShardings on the plan's mesh, shaped like `param_specs()`."""
        return self.model.tree.rebuild([self.sharding(p.spec) for p in self.params], unbox=True)

    def sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def logical_axis_rules(self) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
        """The resolved rules in Flax's format, for `nnx.logical_axis_rules` or
        `nn.logical_to_mesh_sharding`: one (logical, mesh axes) pair per name.

        Size-1 mesh axes are left out, as in the plan's specs. Flax applies rules
        to names alone: the plan's per-array fallbacks (policy.indivisible,
        KV-head replication) are in `param_specs()`, not here.
        """
        return tuple(
            (name, rules_lib.spec_entry(rules_lib.effective_axes(rule.mesh_axes, self.mesh_shape)))
            for name, rule in self.rules.items()
        )

    @contextlib.contextmanager
    def context(self):
        """The plan's mesh and logical-axis rules, for a model's own forward: its
        `nn.with_logical_constraint` (and Flax's other logical names) resolve to the plan's
        layout, and a bare PartitionSpec to its mesh, in the library's own mesh axis names
        where `mesh_aliases:` gives them (`aliased_mesh`). Outside `jax.jit`; inside a
        function being traced, `traced_context()`."""
        mesh, rules = self._model_context()
        with jax.set_mesh(mesh), nn_logical_axis_rules(rules):
            yield self

    @contextlib.contextmanager
    def traced_context(self):
        """`context()` inside a function being traced (jax.jit allows only an abstract mesh
        there): how the runtime's step runs a model's own constraints."""
        mesh, rules = self._model_context()
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn_logical_axis_rules(rules):
            yield self

    def _model_context(self) -> tuple[Mesh, tuple]:
        """(the aliased mesh, the rules in its names) that a model's own forward sees."""
        if self.is_abstract:
            raise ShardspecError(
                "plan.context() needs a plan compiled on devices (a forward runs on them)",
                hint="compile(strategy, model) without abstract_mesh=True",
            )
        mesh, names = self.aliased_mesh()
        renamed = ((name, self._renamed(name, entry, names)) for name, entry in self.logical_axis_rules())
        return mesh, tuple((name, entry) for name, entry in renamed if entry is not _UNSAID)

    def _renamed(self, logical: str, entry, names: Mapping[str, str]):
        """A rule's spec entry in the aliased mesh's names. Where it splits over part of what one
        alias stands for (which the aliased mesh cannot say): a built-in rule the strategy did
        not name is left out (_UNSAID), one it wrote is a ShardspecError."""
        if entry is None:
            return None
        axes = (entry,) if isinstance(entry, str) else entry
        for alias in dict.fromkeys(names[a] for a in axes):
            group = [a for a, n in names.items() if n == alias and self.mesh_shape[a] > 1]
            if not set(group) <= set(axes):
                if self.rules[logical].implicit:
                    return _UNSAID
                raise ShardspecError(
                    f"rules.{logical} splits over {' × '.join(axes)}, but mesh_aliases.{alias} stands for "
                    f"{' × '.join(group)}",
                    path=f"mesh_aliases.{alias}",
                    hint="alias the axes that rules split over apart, or split over all of the alias",
                )
        renamed = tuple(dict.fromkeys(names[a] for a in axes))
        return renamed[0] if len(renamed) == 1 else renamed

    def aliased_mesh(self) -> tuple[Mesh | AbstractMesh, dict[str, str]]:
        """(the plan's devices as a mesh whose axes carry `mesh_aliases:`' names, {plan axis ->
        its name there}). An alias of several plan axes is their product; of none, a size-1
        axis; a plan axis no alias names keeps its own name. Shardings on it and on the plan's
        mesh place the same devices alike, so one program may mix them."""
        aliases = self.strategy.mesh_aliases
        if not aliases:
            return self.mesh, {a: a for a in self.mesh_shape}
        groups = [(alias, axes) for alias, axes in aliases.items()]
        named = {a for _, axes in groups for a in axes}
        groups += [(a, (a,)) for a in self.mesh_shape if a not in named]
        order = [list(self.mesh_shape).index(a) for _, axes in groups for a in axes]
        sizes = [math.prod(self.mesh_shape[a] for a in axes) for _, axes in groups]
        names = {a: alias for alias, axes in groups for a in axes}
        if isinstance(self.mesh, AbstractMesh):
            return AbstractMesh(tuple(sizes), tuple(alias for alias, _ in groups)), names
        devices = self.mesh.devices.transpose(order).reshape(sizes)
        return Mesh(devices, tuple(alias for alias, _ in groups)), names

    def activation_spec(self, axes: Sequence[str | None]) -> P:
        """The PartitionSpec of an activation with these logical axes (ShardspecError if unresolvable)."""
        spec, problems = layouts_lib.activation_spec(
            f"axes {tuple(axes)}", axes, self.strategy, self.rules, self.mesh_shape
        )
        raise_all(problems)
        return spec

    def constrain(
        self, x: jax.Array, name: str | None = None, *, axes: Sequence[str | None] | None = None
    ) -> jax.Array:
        """Pin an activation: at a named point of the runtime (`"attn_in"`, ...), or anywhere
        by its logical axes, `axes=("batch", None, "hidden")`."""
        if (name is None) == (axes is None):
            raise TypeError("constrain() takes a named point or axes=, exactly one")
        if axes is None:
            spec = self.activations[name]
        else:
            if len(axes) != x.ndim:
                raise ShardspecError(
                    f"constrain: {len(axes)} axes {tuple(axes)} for an array of shape {x.shape}",
                    path="axes",
                    hint="one logical name (or None) per dimension",
                )
            spec = self.activation_spec(axes)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    @property
    def layout(self) -> Layout:
        """What the model's forward needs from the plan, passed explicitly."""
        return Layout(
            constrain=self.constrain,
            kv_repeat=self.kv_repeat,
            per_shard=functools.partial(per_shard, self),
            moe_dispatch=self.strategy.runtime.moe_dispatch,
        )


def compile(
    strategy: Strategy | str | os.PathLike,
    model: Any = None,
    *,
    axes: Any = None,
    kv_heads: int | None = None,
    paddable: Iterable[str] = (),
    devices: Sequence[jax.Device] | None = None,
    abstract_mesh: bool = False,
) -> ShardingPlan:
    """Compile a strategy against a model's abstract shapes.

    `model` (or the strategy's `model:`) is a preset name, a config or a Hugging
    Face checkpoint directory (whose tensors are checked here), or an outside
    model: an `nnx.Module` (concrete or abstract) or `nnx.State`, Flax Linen
    variables, or a pytree of arrays / ShapeDtypeStructs with `axes=` (a tree of
    the same structure whose leaves are tuples of logical names or None).
    `kv_heads` gives an outside model's KV-head count for `attention_data: auto`
    when the model declares no decoder geometry; `paddable` names its logical
    axes that `policy.indivisible: pad` may zero-pad (outputs stay exact).

    `abstract_mesh=True` builds the plan on an AbstractMesh: every check runs and
    nothing touches a device (validate, explain). Otherwise the mesh is built on
    `devices` (default: all devices, whose count must match the strategy).
    """
    if not isinstance(strategy, Strategy):
        strategy = load(strategy)
    source = model if model is not None else strategy.model
    if source is None:
        raise ShardspecError(
            "no model given",
            path="model",
            file=strategy.source.file,
            hint="set model: in the strategy or pass --model (see `shardspec models`)",
        )
    where = strategy.source if model is None else None  # the strategy's model: its problems are located there
    if names_a_factory(source):  # package.module:factory (--model, model:)
        source = load_factory(source, where)
    info = _model_info(strategy, source, where, axes, kv_heads, paddable)
    return build_plan(strategy, info, devices=devices, abstract_mesh=abstract_mesh)


def _model_info(strategy: Strategy, source, where, axes, kv_heads, paddable) -> ModelInfo:
    if not is_own_model(source):
        return outside_model(source, axes=axes, kv_heads=kv_heads, paddable=tuple(paddable))
    given = [name for name, v in (("axes", axes), ("kv_heads", kv_heads), ("paddable", paddable)) if v]
    if given:
        raise ShardspecError(
            f"{'=, '.join(given)}= describe outside models; {os.fspath(source)!r} is "
            "one of shardspec's, which knows its own",
            path=given[0],
        )
    info = own_model(source, _DTYPES[strategy.runtime.dtype], where)
    if info.checkpoint:  # file headers only: every tensor there, with its shape, before any device work
        from .checkpoint import check as check_checkpoint

        check_checkpoint(info.config, info.tree.abstract())
    return info


def build_plan(
    strategy: Strategy,
    model: ModelInfo,
    *,
    devices: Sequence[jax.Device] | None = None,
    abstract_mesh: bool = False,
    check_overrides: bool = True,
) -> ShardingPlan:
    """The plan of a model already read; `check_overrides=False` lets a `params:` entry
    match nothing (the HLO report's model with no decoder layer)."""
    attention_data, why = _attention_data(strategy, model)
    shape = strategy.parallelism.mesh_shape(attention_data)
    table = rules_lib.rule_table(strategy)
    own = model.config is not None
    params, problems = layouts_lib.param_layouts(
        model, strategy, rules_lib.param_table(table, own), shape, check_overrides=check_overrides
    )
    problems += rules_lib.built_in_problems(strategy)
    problems += layouts_lib.unnamed_problems(strategy, model, params, shape)
    found, unused_rules = layouts_lib.unused_rules(strategy, params, model)
    problems += found
    activations, act_problems = layouts_lib.activation_specs(strategy, table, shape)
    if model.geometry is not None:
        problems += layouts_lib.attention_problems(strategy, table, shape, model.geometry, params)
        problems += layouts_lib.serving_problems(strategy, table, shape)
        problems += _max_model_len_problems(strategy, model.geometry)
    raise_all(problems + act_problems)

    if abstract_mesh:
        mesh = mesh_lib.abstract_mesh(shape)
    else:
        mesh = mesh_lib.device_mesh(shape, strategy, devices)
    kv = None
    if model.geometry is not None:
        param_bytes = sum(p.bytes_per_device for p in params)
        kv = layouts_lib.kv_cache_layout(
            strategy, table, shape, model.geometry, kv_dtype(strategy), _free_device_bytes(mesh, param_bytes)
        )
    runtime = None if kv is None else _runtime_sizes(strategy, shape, kv, model.geometry)
    return ShardingPlan(
        strategy,
        model,
        mesh,
        shape,
        attention_data,
        why,
        table,
        tuple(params),
        activations,
        kv,
        runtime,
        activations["attn_in"][0],
        unused_rules,
    )


def nn_logical_axis_rules(rules):
    """Flax's logical-axis rules context (Linen's, which NNX's logical constraints read too)."""
    import flax.linen as nn

    return nn.logical_axis_rules(rules)


_UNSAID = object()  # a rule plan.context() leaves out (see ShardingPlan._renamed)


def kv_dtype(strategy: Strategy) -> str:
    """The KV cache's element type: `kv_cache.dtype`, with auto = the runtime dtype."""
    return strategy.runtime.dtype if strategy.kv_cache.dtype == "auto" else strategy.kv_cache.dtype


def _max_model_len_problems(strategy: Strategy, geometry) -> list:
    asked = strategy.runtime.max_model_len
    if asked is None or asked <= geometry.max_seq_len:
        return []
    return [
        strategy.source.problem(
            "runtime.max_model_len",
            f"{asked} exceeds the model's maximum length {geometry.max_seq_len}",
            f"use at most {geometry.max_seq_len}, or leave it out for the model's maximum",
        )
    ]


def _runtime_sizes(strategy: Strategy, shape, kv: KVCacheLayout, geometry) -> RuntimeSizes:
    rt = strategy.runtime
    return RuntimeSizes(
        dp_ranks=dp_ranks(shape),
        page_size=kv.page_size,
        pages_per_rank=kv.pages_per_rank,
        max_model_len=rt.max_model_len,  # None: the model's maximum, or what a rank holds if less
        max_num_seqs=rt.max_num_seqs,
        max_num_batched_tokens=rt.max_num_batched_tokens,
        model_max_len=geometry.max_seq_len,
        growth_reserve=None if rt.kv_growth_reserve == "auto" else rt.kv_growth_reserve,
    )


def _attention_data(strategy: Strategy, model: ModelInfo) -> tuple[int, str]:
    if model.kv_heads is None and strategy.parallelism.attention_data == "auto":
        return 1, (
            f"attention_data = 1: auto, and {model.name} declares no KV heads "
            "(give compile(..., kv_heads=N) or a decoder geometry for attention DP)"
        )
    return strategy.resolve_attention_data(model.kv_heads)


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
