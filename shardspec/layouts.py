"""The layouts a plan is made of: one per parameter, the named activations, the KV cache.

Pure functions of the strategy, the model's abstract tree and the mesh shape,
called once by `compile()`; each returns its problems rather than raising, so
the plan reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from . import param_tree, sizes
from . import rules as rules_lib
from .errors import Problem, did_you_mean, one_of
from .model_info import ModelInfo
from .models import axes as ax
from .path_regex import compile_match
from .protocol import DecoderGeometry
from .strategy import Strategy

CPU_PAGES_PER_RANK = 256  # `num_pages: auto` on CPU: 4,096 tokens a rank at page_size 16

# Logical names the runtime itself lays out (tokens, KV pages and the named
# activation points), whatever the model calls its own dimensions.
RUNTIME_AXES = frozenset({ax.KV_PAGES} | {a for names in ax.ACTIVATIONS.values() for a in names if a})


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    path: str  # "layers.0.self_attn.q_proj" (the caller's framework's path)
    shape: tuple[int, ...]  # the model's shape
    stored_shape: tuple[int, ...]  # after policy padding (== shape unless padded)
    dtype: str
    itemsize: int
    axes: tuple[str | None, ...]  # logical axes
    spec: P
    bytes_per_device: int
    notes: tuple[str, ...]  # policy fallbacks, KV-head replication
    axes_from: str | None = None  # "params[0]" when a `params:` override set the axes
    is_param: bool = True  # False: other state (RNG keys and counts, batch statistics), replicated

    @property
    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.itemsize


@dataclasses.dataclass(frozen=True)
class KVCacheLayout:
    """The arrays of a layer's cache, [pages, page_size, kv slots, head_dim] each: one for K
    and one for V, or (multi-head latent attention) one latent array whose first
    `latent_dim` channels are also the values."""

    spec: P
    kv_heads: int  # the model's KV heads
    slots: int  # KV heads as stored: kv_heads × repeat
    replication: int  # devices of one tensor group holding each KV head
    page_size: int
    pages_per_rank: int
    head_dim: int
    num_layers: int
    dtype: str
    bytes_per_page_per_device: int  # every array, all layers
    arrays: int = 2  # per layer: K and V (2) or the latent (1)
    latent_dim: int | None = None  # a latent cache: the channels that are also the values

    @property
    def is_latent(self) -> bool:
        return self.latent_dim is not None

    @property
    def bytes_per_token_per_layer(self) -> int:
        """What one token costs one layer, stored once (before replication)."""
        return self.arrays * self.kv_heads * self.head_dim * jnp.dtype(self.dtype).itemsize

    @property
    def tokens_per_rank(self) -> int:
        """Tokens one DP rank's pages hold."""
        return self.pages_per_rank * self.page_size

    def bytes_per_device(self, pages_per_rank: int | None = None) -> int:
        return self.bytes_per_page_per_device * (pages_per_rank or self.pages_per_rank)


def param_layouts(
    model: ModelInfo, strategy: Strategy, table, shape: Mapping[str, int], *, check_overrides: bool = True
) -> tuple[list[ParamLayout], list[Problem]]:
    """Every parameter's layout; `params:` overrides first (the first match wins)."""
    tree = model.tree
    paths = tree.paths
    overrides = [(o, compile_match(o.match)) for o in strategy.params]
    used_override = [False] * len(overrides)
    layouts, problems = [], []
    for leaf, path in zip(tree.leaves, paths):
        if not leaf.is_param:  # RNG keys and counts, batch statistics: replicated, not named
            layouts.append(_state_layout(path, leaf, shape))
            continue
        axes = leaf.axes or (None,) * len(leaf.shape)
        axes_from = None
        for i, (o, regex) in enumerate(overrides):
            if regex.search(path):
                used_override[i] = True
                if len(o.axes) != len(leaf.shape):
                    problems.append(
                        strategy.source.problem(
                            f"params[{o.index}].axes",
                            f"{path} has {len(leaf.shape)} dims but {len(o.axes)} axes were given",
                            f"give one logical axis (or null) per dim of shape {leaf.shape}",
                        )
                    )
                    break
                axes, axes_from = o.axes, f"params[{o.index}]"
                break
        res, found = rules_lib.resolve_array(
            path,
            leaf.shape,
            axes,
            table=table,
            mesh_shape=shape,
            strategy=strategy,
            axes_from=axes_from,
            paddable=model.paddable,
        )
        problems += found
        notes = res.notes + (("KV heads replicated over model",) if res.kv_replicated else ())
        notes += _head_count_notes(model, strategy, leaf.shape, axes)
        if leaf.axes is None and axes_from is None:
            notes += ("the model gives no logical axes: replicated",)
        layouts.append(
            ParamLayout(
                path,
                leaf.shape,
                res.padded_shape,
                str(leaf.dtype),
                leaf.itemsize,
                tuple(axes),
                res.spec,
                rules_lib.bytes_per_device(res.padded_shape, res.spec, shape, leaf.itemsize),
                notes,
                axes_from,
            )
        )
    if check_overrides:
        problems += _unused_overrides(strategy, overrides, used_override, paths)
    return layouts, _dedupe(problems)


def _head_count_notes(model: ModelInfo, strategy: Strategy, shape, axes) -> tuple[str, ...]:
    """A dimension named for heads whose size is not the model's head count (in units where
    declared): merged heads × head_dim a split would cut inside heads, unless `units:` says so."""
    geometry, notes = model.geometry, []
    if geometry is None:
        return ()
    for dim, (size, name) in enumerate(zip(shape, axes)):
        if not name or not name.endswith("heads"):
            continue
        count = geometry.num_kv_heads if "kv" in name else geometry.num_heads
        units = size // strategy.units.get(name, 1)
        if units == count:
            continue
        if size % count == 0 and name not in strategy.units:
            notes.append(
                f"dim {dim} ({name} = {size}) is not the model's {count} heads: if heads × head_dim are "
                f"merged, declare units: {{{name}: {size // count}}} so shards keep heads whole"
            )
        else:
            notes.append(f"dim {dim} ({name} = {size}) is not a multiple of the model's {count} heads")
    return tuple(notes)


def _state_layout(path: str, leaf, shape: Mapping[str, int]) -> ParamLayout:
    spec = P(*(None,) * len(leaf.shape))
    per_device = rules_lib.bytes_per_device(leaf.shape, spec, shape, leaf.itemsize)
    axes = (None,) * len(leaf.shape)
    return ParamLayout(
        path, leaf.shape, leaf.shape, str(leaf.dtype), leaf.itemsize, axes, spec, per_device, (), None, False
    )


def _unused_overrides(strategy: Strategy, overrides, used: list[bool], paths) -> list[Problem]:
    """A `params:` entry that sets no parameter's axes is a mistake, never silent."""
    problems = []
    for (o, regex), took in zip(overrides, used):
        if took:
            continue
        if any(regex.search(p) for p in paths):
            message = f"{o.match!r}: every parameter it matches is set by an earlier params: entry"
            hint = "the first match wins; move this entry up or narrow the earlier one"
        else:
            message = f"{o.match!r} matches no parameter"
            hint = f"it is a regex searched in each path; paths look like {one_of(repr(p) for p in paths[:3])}"
        problems.append(strategy.source.problem(f"params[{o.index}].match", message, hint))
    return problems


def unnamed_problems(strategy: Strategy, model: ModelInfo, layouts: list[ParamLayout], shape) -> list[Problem]:
    """A model none of whose parameters has logical axes (its own or params:'), under a strategy
    that splits parameters (tensor or expert > 1): nothing could be split, a mistake. Pure data
    parallelism replicates every parameter anyway and needs no names."""
    params = [leaf for leaf in model.tree.leaves if leaf.is_param]
    if not params or any(leaf.axes is not None for leaf in params) or any(p.axes_from for p in layouts):
        return []
    if shape["model"] * shape["expert"] * shape["attn_dp"] == 1:
        return []
    how = param_tree.how_to_name_axes(model.tree.kind)
    return [Problem(f"{model.name} carries no logical axes, so no parameter can be split", path="model", hint=how)]


def unused_rules(strategy: Strategy, layouts: list[ParamLayout], model: ModelInfo) -> tuple[list[Problem], tuple]:
    """(problems, names): `rules:` names the model (its parameters, the activation names the
    strategy declares) and the runtime do not use. Each is a problem where it looks like a typo
    of a used name or `policy.unused_rules` is error; the others are returned for explain to
    warn of (one strategy may serve several models). A declared activation name without a rule
    is a problem under `policy.unmatched: error` (the model's constraint would replicate)."""
    own = sorted({a for p in layouts for a in p.axes if a} | set(strategy.activations))
    used = sorted(set(own) | RUNTIME_AXES)
    problems, unused = [], []
    if strategy.policy.unmatched == "error":
        for name in strategy.activations:
            if name not in strategy.rules and name not in rules_lib.DEFAULT_RULES:
                message = f"the activation name {name!r} has no rule"
                hint = f"add rules.{name} (a mesh axis, or null to replicate), or set policy.unmatched: replicate"
                problems.append(strategy.source.problem("activations", message, hint))
    for name in strategy.rules:
        if name in used:
            continue
        typo = did_you_mean(name, used)
        if typo or strategy.policy.unused_rules == "error":
            hint = typo or f"{model.name} uses {one_of(own)}; or set policy.unused_rules: warn"
            message = f"logical axis {name!r} is not used by model {model.name}"
            problems.append(strategy.source.problem(f"rules.{name}", message, hint))
        else:
            unused.append(name)
    return problems, tuple(unused)


def _dedupe(problems):
    """One problem per (location, message without the parameter path): layers repeat."""
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message.partition(": ")[2] or p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def activation_specs(strategy: Strategy, table, shape) -> tuple[dict[str, P], list[Problem]]:
    """The runtime's named activation points (`axes.ACTIVATIONS`) as PartitionSpecs."""
    specs, problems = {}, []
    for name, logical in ax.ACTIVATIONS.items():
        spec, found = activation_spec(f"activation {name!r}", logical, strategy, table, shape)
        specs[name] = spec
        problems += found
    return specs, _dedupe(problems)


def activation_spec(label: str, logical, strategy: Strategy, table, shape) -> tuple[P, list[Problem]]:
    """One activation's logical axes -> its PartitionSpec (no divisibility: shapes vary per step)."""
    entries, used, problems = [], {}, []
    for axis in logical:
        rule = table.get(axis) if axis else None
        if axis and rule is None:
            if strategy.policy.unmatched == "error":
                problems.append(
                    strategy.source.problem(
                        "rules",
                        f"{label}: logical axis {axis!r} has no rule",
                        did_you_mean(axis, table) or f"add rules.{axis}, or set policy.unmatched: replicate",
                    )
                )
            entries.append(None)
            continue
        mesh = rules_lib.effective_axes(rule.mesh_axes, shape) if rule else ()
        problems += rules_lib.claim_axes(label, axis, mesh, used, table, strategy.source)
        entries.append(rules_lib.spec_entry(mesh))
    return P(*entries), problems


def attention_problems(
    strategy: Strategy, table, shape, geometry: DecoderGeometry, params: list[ParamLayout]
) -> list[Problem]:
    """The runtime splits query heads over `heads`' mesh axes and stores KV heads as slots
    over `kv_heads`': every query head must find its KV slot on its own device.

    (A parameter with a `heads` axis has had its divisibility reported already.)"""
    heads, kv = geometry.num_heads, geometry.num_kv_heads
    if heads < 1 or kv < 1 or heads % kv:
        return [
            strategy.source.problem(
                "model",
                f"decoder geometry: {heads} query heads and {kv} KV heads",
                "query heads must be a positive multiple of KV heads",
            )
        ]
    latent = geometry.latent_dim
    if latent is not None and (kv != 1 or not 1 <= latent <= geometry.head_dim):
        return [
            strategy.source.problem(
                "model",
                f"decoder geometry: a latent cache of {kv} KV heads, latent_dim {latent}, head_dim {geometry.head_dim}",
                "a latent cache has 1 KV head, and its values are 1..head_dim of its channels",
            )
        ]
    problems = []
    rule = table[ax.HEADS]
    head_axes = rules_lib.effective_axes(rule.mesh_axes, shape)
    shards = rules_lib.shard_count(head_axes, shape)
    if heads % shards and not any(ax.HEADS in p.axes for p in params):
        by = " × ".join(f"{a} {shape[a]}" for a in head_axes)
        problems.append(
            strategy.source.problem(
                rule.yaml_path or rules_lib.AXIS_KEY[head_axes[-1]],
                f"attention: {heads} query heads are not divisible by {shards} shards ({by})",
                f"choose sizes that divide {heads}, or set rules.heads and rules.kv_heads to null",
            )
        )
    elif not heads % shards and heads % kv_slots(geometry, table, shape):
        problems.append(
            strategy.source.problem(
                table[ax.KV_HEADS].yaml_path or "rules",
                f"attention: {kv} KV heads stored as {kv_slots(geometry, table, shape)} slots do not pair with "
                f"{heads} query heads",
                "shard rules.kv_heads over the same mesh axes as rules.heads",
            )
        )
    return problems


def kv_slots(geometry: DecoderGeometry, table, shape) -> int:
    """KV heads as stored over the `kv_heads` rule's mesh axes (`sizes.kv_slots`)."""
    kv_axes = rules_lib.effective_axes(table[ax.KV_HEADS].mesh_axes, shape)
    return sizes.kv_slots(geometry.num_kv_heads, rules_lib.shard_count(kv_axes, shape))


def serving_problems(strategy: Strategy, table, shape) -> list[Problem]:
    """A DP rank's tokens and its KV pages must live on the same devices: the paged
    attention of each rank reads only its own pages."""
    tokens, pages = (rules_lib.effective_axes(table[a].mesh_axes, shape) for a in (ax.BATCH, ax.KV_PAGES))
    if tokens == pages:
        return []
    where = table[ax.KV_PAGES].yaml_path or table[ax.BATCH].yaml_path or "rules"
    return [
        strategy.source.problem(
            where,
            f"tokens shard over {list(tokens)} but KV pages over {list(pages)}",
            "rules.batch and rules.kv_pages must name the same mesh axes for serving",
        )
    ]


def kv_cache_layout(
    strategy: Strategy, table, shape, geometry: DecoderGeometry, dtype: str, free_bytes: int | None
) -> KVCacheLayout:
    """The paged KV cache: pages over the DP ranks, KV heads over `model` (repeated if fewer)."""
    kv_axes = rules_lib.effective_axes(table[ax.KV_HEADS].mesh_axes, shape)
    kv_shards = rules_lib.shard_count(kv_axes, shape)
    kv = geometry.num_kv_heads
    slots = sizes.kv_slots(kv, kv_shards)
    pages = rules_lib.spec_entry(rules_lib.effective_axes(table[ax.KV_PAGES].mesh_axes, shape))
    spec = P(pages, None, rules_lib.spec_entry(kv_axes), None)
    cfg = strategy.kv_cache
    itemsize = jnp.dtype(dtype).itemsize
    arrays = geometry.kv_arrays
    per_page = arrays * geometry.num_layers * cfg.page_size * (slots // kv_shards) * geometry.head_dim * itemsize
    if cfg.num_pages != "auto":
        pages_per_rank = int(cfg.num_pages)
    elif free_bytes is None:
        pages_per_rank = CPU_PAGES_PER_RANK
    else:
        pages_per_rank = max(1, free_bytes // per_page)
    # Copies of each KV head in one tensor group: repeated slots × model devices per slot.
    replication = (slots // kv) * max(1, shape["model"] // kv_shards)
    return KVCacheLayout(
        spec,
        kv,
        slots,
        replication,
        cfg.page_size,
        pages_per_rank,
        geometry.head_dim,
        geometry.num_layers,
        dtype,
        per_page,
        arrays,
        geometry.latent_dim,
    )
