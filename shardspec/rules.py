"""Logical axes -> mesh axes: the rule table and the resolution of one array.

The only module besides `mesh.py` that knows mesh axis names. Pure: a function
of the strategy, a shape and the mesh shape; no devices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec as P

from .errors import Problem, did_you_mean
from .models import axes as ax
from .strategy import BUILT_IN, Strategy

# logical axis -> (mesh axes, why). DESIGN §2.
DEFAULT_RULES: dict[str, tuple[tuple[str, ...], str]] = {
    ax.BATCH: (("data", "attn_dp"), "each DP rank owns its tokens"),
    ax.KV_PAGES: (("data", "attn_dp"), "each DP rank owns its KV pages"),
    ax.MLP_BATCH: (("data",), "inside the FFN the attn_dp devices act as tensor parallel"),
    ax.HEADS: (("model",), "Megatron attention"),
    ax.KV_HEADS: (("model",), "Megatron attention"),
    ax.MLP: (("attn_dp", "model"), "the FFN uses the whole tensor group"),
    ax.VOCAB: (("attn_dp", "model"), "the vocab uses the whole tensor group"),
    ax.EXPERT: (("expert",), "expert parallelism"),
    ax.EXPERT_MLP: (("attn_dp", "model"), "experts use the whole tensor group"),
    ax.EMBED: ((), "replicated"),
    ax.HEAD_DIM: ((), "replicated"),
}

# Which strategy key sets the size of each mesh axis (for error locations).
AXIS_KEY = {
    "data": "parallelism.data",
    "attn_dp": "parallelism.attention_data",
    "expert": "parallelism.expert",
    "model": "parallelism.tensor",
}


@dataclasses.dataclass(frozen=True)
class Rule:
    logical: str
    mesh_axes: tuple[str, ...]  # as written, size-1 axes included
    why: str  # "default: Megatron attention", "rules.mlp" or "rules.heads: default (Megatron attention)"
    yaml_path: str | None  # where the user set it, for errors
    implicit: bool = False  # a built-in rule the strategy did not name (not for an outside model's parameters)


def rule_table(strategy: Strategy) -> dict[str, Rule]:
    table = {name: Rule(name, mesh, f"default: {why}", None, True) for name, (mesh, why) in DEFAULT_RULES.items()}
    for name, mesh in strategy.rules.items():
        if mesh == BUILT_IN and name in DEFAULT_RULES:
            built_in, why = DEFAULT_RULES[name]
            table[name] = Rule(name, built_in, f"rules.{name}: default ({why})", f"rules.{name}")
        elif mesh != BUILT_IN:
            table[name] = Rule(name, tuple(mesh), f"rules.{name}", f"rules.{name}")
    return table


def built_in_problems(strategy: Strategy) -> list[Problem]:
    """`rules: {name: default}` for a name with no built-in rule."""
    return [
        strategy.source.problem(
            f"rules.{name}",
            f"there is no built-in rule for {name!r}",
            f"built-in rules exist for {', '.join(DEFAULT_RULES)}; give mesh axes or null",
        )
        for name, mesh in strategy.rules.items()
        if mesh == BUILT_IN and name not in DEFAULT_RULES
    ]


def param_table(table: Mapping[str, Rule], own_model: bool) -> Mapping[str, Rule]:
    """The rules parameters resolve by: every rule for shardspec's own models; for an outside
    model only those its strategy names (`rules: {heads: default}` asks for a built-in one), so
    a built-in rule never splits a parameter because its name happens to match."""
    return table if own_model else {name: rule for name, rule in table.items() if not rule.implicit}


def effective_axes(mesh_axes: Sequence[str], mesh_shape: Mapping[str, int]) -> tuple[str, ...]:
    """Mesh axes that actually split: size-1 axes are dropped from specs."""
    return tuple(a for a in mesh_axes if mesh_shape[a] > 1)


def shard_count(mesh_axes: Sequence[str], mesh_shape: Mapping[str, int]) -> int:
    """Shards a dimension split over `mesh_axes` has: the product of their sizes."""
    return math.prod(mesh_shape[a] for a in mesh_axes)


def spec_entry(mesh_axes: tuple[str, ...]):
    """PartitionSpec entry: None, 'model' or ('attn_dp', 'model')."""
    if not mesh_axes:
        return None
    return mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The layout of one array under the plan."""

    spec: P
    padded_shape: tuple[int, ...]
    notes: tuple[str, ...]  # every policy fallback / KV replication, for explain
    kv_replicated: bool = False


def resolve_array(
    path: str,
    shape: Sequence[int],
    logical: Sequence[str | None],
    *,
    table: Mapping[str, Rule],
    mesh_shape: Mapping[str, int],
    strategy: Strategy,
    axes_from: str | None = None,
    paddable: frozenset[str] = frozenset(),
) -> tuple[Resolved, list[Problem]]:
    """Resolve one array's logical axes into a PartitionSpec, applying the policy.

    `axes_from` is the YAML path of a `params:` override that gave the axes;
    `paddable` names the logical axes the model can zero-pad exactly.
    """
    problems: list[Problem] = []
    entries, padded, notes, used = [], list(shape), [], {}
    kv_replicated = False
    for dim, (size, name) in enumerate(zip(shape, logical)):
        rule = table.get(name) if name is not None else None
        if rule is None:
            if name is not None:
                found = _unmatched(path, name, table, strategy, axes_from)
                problems += found
                notes += [] if found else [f"{name!r} has no rule: replicated (policy.unmatched)"]
            entries.append(None)
            continue
        mesh = effective_axes(rule.mesh_axes, mesh_shape)
        problems += claim_axes(path, name, mesh, used, table, strategy.source, axes_from)
        shards = shard_count(mesh, mesh_shape)
        unit = strategy.units.get(name, 1)  # merged heads × head_dim: split between heads only
        if size % unit:
            message = f"{path}: dim {dim} ({name} = {size}) is not a whole number of units of {unit}"
            hint = "give the unit (e.g. head_dim) that the dimension is a multiple of"
            problems.append(strategy.source.problem(f"units.{name}", message, hint))
            entries.append(None)
        elif (size // unit) % shards == 0:
            entries.append(spec_entry(mesh))
        elif name == ax.KV_HEADS:
            # KV heads that do not split over their shards: kept whole on every device;
            # the forward repeats them into sizes.kv_slots(...) slots, so each device
            # holds the heads its queries read (layouts.attention_problems checks they pair).
            kv_replicated = True
            entries.append(None)
        else:
            entry, padded[dim], note, found = _indivisible(
                f"{path}: dim {dim}",
                name,
                size,
                unit,
                mesh,
                rule.yaml_path or axes_from,
                strategy,
                mesh_shape,
                paddable,
            )
            entries.append(entry)
            notes += [note] if note else []
            problems += found
    return Resolved(P(*entries), tuple(padded), tuple(notes), kv_replicated), problems


def _unmatched(path: str, name: str, table, strategy: Strategy, axes_from: str | None) -> list[Problem]:
    """A logical axis with no rule: a problem under `policy.unmatched: error`, else none (replicated)."""
    if strategy.policy.unmatched != "error":
        return []
    close = did_you_mean(name, table)
    built_in = ", or default (the built-in rule)" if name in DEFAULT_RULES else ""
    return [
        strategy.source.problem(
            axes_from or "rules",
            f"{path}: logical axis {name!r} has no rule",
            f"{close + ' ' if close else ''}add rules.{name}: <mesh axis>, null{built_in}, "
            "or set policy.unmatched: replicate",
        )
    ]


def _indivisible(
    where: str, name: str, size: int, unit: int, mesh, key: str | None, strategy: Strategy, mesh_shape, paddable
) -> tuple[object, int, str | None, list[Problem]]:
    """A dimension (`where`: its array and index) whose units do not split over its shards, as
    `policy.indivisible` says: (its spec entry, its stored size, a note, problems)."""
    shards = shard_count(mesh, mesh_shape)
    policy = strategy.policy.indivisible
    if policy == "error":
        by = " × ".join(f"{a} {mesh_shape[a]}" for a in mesh)
        units = f", {size // unit} units of {unit}: a shard would cut a unit" if unit > 1 else ""
        problem = strategy.source.problem(
            key or AXIS_KEY[mesh[-1]],
            f"{where} ({name} = {size}{units}) is not divisible by {shards} shards ({by})",
            f"choose sizes that divide {size // unit}, or set policy.indivisible: replicate or pad",
        )
        return None, size, None, [problem]
    if policy == "pad" and name in paddable:
        padded = -(-size // (shards * unit)) * shards * unit
        return (
            spec_entry(mesh),
            padded,
            f"{name} {size} padded to {padded} for {shards} shards (policy.indivisible: pad)",
            [],
        )
    why = "policy.indivisible: replicate" if policy == "replicate" else f"pad is not known to be exact for {name}"
    return None, size, f"{name} {size} not divisible by {shards} shards: replicated ({why})", []


def claim_axes(
    label: str,
    name: str,
    mesh: Sequence[str],
    used: dict[str, str],
    table: Mapping[str, Rule],
    source,
    axes_from: str | None = None,
) -> list[Problem]:
    """Record in `used` (mesh axis -> logical axis) that `name` splits over `mesh`; a
    problem for each mesh axis an earlier dimension of the same array already uses."""
    problems = []
    for a in mesh:
        if a in used:
            # Blame whichever of the two rules the user wrote.
            blame = table[name].yaml_path or table[used[a]].yaml_path or axes_from or "rules"
            problems.append(
                source.problem(
                    blame,
                    f"{label}: mesh axis {a!r} shards both {used[a]!r} and {name!r}",
                    "a mesh axis may shard only one dimension of an array; change one of the rules",
                )
            )
    used.update({a: name for a in mesh})
    return problems


def shards_per_dim(spec: P, mesh_shape: Mapping[str, int]) -> list[int]:
    out = []
    for entry in spec:
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        out.append(shard_count(names, mesh_shape))
    return out


def bytes_per_device(shape: Sequence[int], spec: P, mesh_shape: Mapping[str, int], itemsize: int) -> int:
    shards = shards_per_dim(spec, mesh_shape) + [1] * (len(shape) - len(spec))
    return math.prod(s // k for s, k in zip(shape, shards)) * itemsize
