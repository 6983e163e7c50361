"""Any model's parameters as one flat list of (path, shape, dtype, logical axes), and back.

`compile()` reads a model into a `ParamTree` and never keeps its arrays: every
leaf becomes a ShapeDtypeStruct. Accepted, each in its framework's own terms:

- an `nnx.Module` (concrete or from `nnx.eval_shape`) or an `nnx.State`: every
  Variable is a leaf; its logical axes are its partitioning metadata
  (`nnx.with_partitioning`, `nnx.Param(..., out_sharding=...)`); paths are
  dotted, `layers.0.attn.kernel`;
- Flax Linen variables: `nn.LogicallyPartitioned` / `nn.Partitioned` boxes give
  the names (both read as logical names, mapped by the strategy's rules); paths
  are Linen's, `params/Dense_0/kernel`;
- any other pytree of arrays or ShapeDtypeStructs, with `axes=` a tree of the
  same structure whose leaves are tuples of logical names or None; dotted paths.

Results go back into the caller's structure (`rebuild`): an `nnx.State` of
Variables for NNX (as `nnx.get_partition_spec` returns), the nested dict with
boxes for Linen (unboxed for specs, as `nn.get_partition_spec` returns), the
same pytree otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from flax.core import meta as linen_meta

from .errors import ShardspecError

NNX, LINEN, PYTREE = "nnx", "linen", "pytree"

# Where Flax has kept a Variable's logical axes: 0.12 `out_sharding`, 0.11
# `sharding_names`, earlier `sharding` (a tuple of names, not a jax Sharding).
_NNX_AXES_KEYS = ("out_sharding", "sharding_names", "sharding")

ACCEPTED = (
    "a preset name, a config, a Hugging Face checkpoint directory, an nnx.Module or nnx.State, "
    "Linen variables, or a pytree of arrays / ShapeDtypeStructs with axes="
)


@dataclasses.dataclass(frozen=True)
class Leaf:
    keys: tuple[str, ...]  # ("layers", "0", "attn", "kernel")
    shape: tuple[int, ...]
    dtype: Any  # a numpy dtype, or an extended one (PRNG keys)
    axes: tuple[str | None, ...] | None  # None: the model gives this leaf no logical axes
    is_param: bool = True  # False: other state the model carries (RNG keys and counts, batch statistics)

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)


@dataclasses.dataclass(frozen=True, eq=False)
class ParamTree:
    """A model's parameter structure with abstract leaves: shapes, never arrays."""

    kind: str  # NNX | LINEN | PYTREE
    leaves: tuple[Leaf, ...]
    treedef: Any  # jax PyTreeDef over the wrappers (Variables, boxes or arrays)
    wrappers: tuple  # per leaf: its Variable or box holding a ShapeDtypeStruct, or None
    graphdef: nnx.GraphDef | None = None  # an nnx.Module's structure (None for a State)

    def path(self, leaf: Leaf) -> str:
        return ("/" if self.kind == LINEN else ".").join(leaf.keys)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.path(leaf) for leaf in self.leaves)

    def rebuild(self, values: Sequence, *, unbox: bool = False):
        """The caller's structure with `values` (one per leaf, in order) at the leaves.

        NNX: an nnx.State whose Variables hold the values. Linen: the variables
        with each box holding its value, or the bare values with `unbox=True`.
        """
        return _rebuild(self.treedef, self.wrappers, values, unbox)

    def abstract(self):
        """The structure with ShapeDtypeStructs: an nnx.State, Linen variables or a pytree."""
        return self.rebuild([jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in self.leaves])

    def __repr__(self) -> str:
        return f"ParamTree({self.kind}, {len(self.leaves)} leaves)"


def read(model, axes=None) -> ParamTree:
    """The ParamTree of an outside model (see the module docstring); ShardspecError otherwise."""
    if isinstance(model, nnx.Module):
        if axes is not None:
            raise _axes_not_for(type(model).__name__)
        graphdef, state = nnx.split(model)
        return dataclasses.replace(_read_tree(state, None), graphdef=graphdef)
    if _is_linen_module(model):
        raise ShardspecError(
            f"a Linen module ({type(model).__name__}) holds no parameters",
            path="model",
            hint="pass its variables: module.init(...), or jax.eval_shape(module.init, ...) for shapes only",
        )
    if callable(model) or isinstance(model, (str, bytes, int, float, complex, bool)) or model is None:
        raise not_a_model(model)
    return _read_tree(model, axes)


def not_a_model(model) -> ShardspecError:
    return ShardspecError(f"cannot read {_describe(model)} as a model", path="model", hint=f"give {ACCEPTED}")


def flatten_like(tree: ParamTree, given, what: str) -> tuple[list, Callable[[Sequence], Any]]:
    """(values, rebuild) of `given`, checked against the plan's tree.

    `given` is the same model as the plan's, in any form `read` accepts (a module,
    its state, Linen variables or a pytree; no axes needed). `rebuild(values)`
    returns an object of the same kind as `given`. Raises a ShardspecError naming
    the first path that is missing, extra or of another shape.
    """
    graphdef = None
    if isinstance(given, nnx.Module):
        graphdef, given = nnx.split(given)
    elif _is_linen_module(given) or callable(given) or not _is_tree(given):
        raise ShardspecError(
            f"{what} got {_describe(given)}",
            path="params",
            hint="give the model's parameters: the module, its nnx.State, its Linen "
            "variables or the pytree the plan was compiled from",
        )
    pairs, treedef = _flatten(given)
    keyed = {keys: (value, wrapper) for keys, wrapper, value in pairs}
    want = {leaf.keys: leaf for leaf in tree.leaves}
    for keys, leaf in want.items():
        if keys not in keyed:
            raise _mismatch(what, tree, keys, "is in the plan but not in the given parameters")
        value = keyed[keys][0]
        if isinstance(value, jax.ShapeDtypeStruct) or not hasattr(value, "shape"):
            raise _mismatch(
                what,
                tree,
                keys,
                f"is {_describe(value)}, not an array (shapes alone compile a plan; placing needs values)",
            )
        shape = tuple(value.shape)
        if shape != leaf.shape:
            raise _mismatch(what, tree, keys, f"has shape {shape}; the plan has {leaf.shape}")
    extra = next((keys for keys in keyed if keys not in want), None)
    if extra is not None:
        raise _mismatch(what, tree, extra, "is not in the plan (compile the plan from this model)")
    order = {leaf.keys: i for i, leaf in enumerate(tree.leaves)}
    by_plan = sorted(pairs, key=lambda p: order[p[0]])
    values = [value for _, _, value in by_plan]
    wrappers = tuple(wrapper for _, wrapper, _ in pairs)
    position = [order[keys] for keys, _, _ in pairs]  # given leaf j is plan leaf position[j]

    def rebuild(placed: Sequence):
        out = _rebuild(treedef, wrappers, [placed[i] for i in position], unbox=False)
        return nnx.merge(graphdef, out) if graphdef is not None else out

    return values, rebuild


def _mismatch(what: str, tree: ParamTree, keys: tuple[str, ...], problem: str) -> ShardspecError:
    path = ("/" if tree.kind == LINEN else ".").join(keys)
    return ShardspecError(
        f"{what}: parameter {path!r} {problem}",
        path="params",
        hint="the parameters must be the model the plan was compiled from",
    )


def _read_tree(tree, axes) -> ParamTree:
    if not _is_tree(tree):
        raise not_a_model(tree)
    pairs, treedef = _flatten(tree)
    if not pairs:
        raise ShardspecError(f"{_describe(tree)} has no parameters", path="model", hint=f"give {ACCEPTED}")
    kinds = {_wrapper_kind(w) for _, w, _ in pairs}
    kind = NNX if NNX in kinds else LINEN if LINEN in kinds else PYTREE
    if axes is not None and kind != PYTREE:
        raise _axes_not_for("Linen variables" if kind == LINEN else "an nnx.State")
    given_axes = _axes_per_leaf(treedef, axes) if axes is not None else [None] * len(pairs)
    leaves, wrappers = [], []
    for (keys, wrapper, value), leaf_axes in zip(pairs, given_axes):
        path = ("/" if kind == LINEN else ".").join(keys)
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise ShardspecError(
                f"parameter {path!r} is {_describe(value)}, not an array",
                path="model",
                hint="every leaf must be an array or a jax.ShapeDtypeStruct",
            )
        shape = tuple(int(d) for d in value.shape)
        names = _names(path, leaf_axes if axes is not None else _wrapper_axes(wrapper), len(shape))
        leaves.append(Leaf(keys, shape, value.dtype, names, _is_param(kind, keys, wrapper)))
        if wrapper is not None and not isinstance(value, jax.ShapeDtypeStruct):  # never keep the arrays
            wrapper = _rewrap(wrapper, jax.ShapeDtypeStruct(shape, value.dtype))
        wrappers.append(wrapper)
    return ParamTree(kind, tuple(leaves), treedef, tuple(wrappers))


def how_to_name_axes(kind: str) -> str:
    """How a model of this kind gets logical axes (the hint when none has any)."""
    if kind == PYTREE:
        return "pass axes= (a tree of the same structure, tuples of logical names), or name them with params:"
    return (
        "annotate its parameters (nnx.with_partitioning / nn.with_logical_partitioning) "
        "or name their axes with the strategy's params:"
    )


def _flatten(tree) -> tuple[list[tuple[tuple[str, ...], Any, Any]], Any]:
    """[(keys, wrapper or None, value)] in jax's leaf order, and the treedef over wrappers."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_wrapper)
    out = []
    for path, leaf in with_paths:
        keys = tuple(_key_name(k) for k in path)
        if isinstance(leaf, nnx.Variable):
            out.append((keys, leaf, leaf.get_value()))
        elif isinstance(leaf, linen_meta.AxisMetadata):
            out.append((keys, leaf, leaf.unbox()))
        else:
            out.append((keys, None, leaf))
    return out, treedef


def _rebuild(treedef, wrappers: Sequence, values: Sequence, unbox: bool):
    leaves = []
    for wrapper, value in zip(wrappers, values):
        if wrapper is None or (unbox and isinstance(wrapper, linen_meta.AxisMetadata)):
            leaves.append(value)
        else:
            leaves.append(_rewrap(wrapper, value))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _rewrap(wrapper, value):
    if isinstance(wrapper, nnx.Variable):
        return wrapper.replace(value)
    return wrapper.replace_boxed(value)


def _is_wrapper(x) -> bool:
    return isinstance(x, (nnx.Variable, linen_meta.AxisMetadata))


def _is_param(kind: str, keys: tuple[str, ...], wrapper) -> bool:
    """A parameter, or other state: an NNX Variable that is not an nnx.Param (RngKey, RngCount,
    BatchStat, a cache), a Linen collection other than "params"."""
    if isinstance(wrapper, nnx.Variable):
        return isinstance(wrapper, nnx.Param)
    return kind != LINEN or keys[0] == "params"


def _wrapper_kind(wrapper) -> str:
    if isinstance(wrapper, nnx.Variable):
        return NNX
    return LINEN if isinstance(wrapper, linen_meta.AxisMetadata) else PYTREE


def _wrapper_axes(wrapper) -> Any:
    """The one place that reads logical axes from Flax metadata (every key Flax has used)."""
    if isinstance(wrapper, nnx.Variable):
        meta = wrapper.get_metadata()
        for key in _NNX_AXES_KEYS:
            names = meta.get(key)
            if names and not isinstance(names, jax.sharding.Sharding):
                return names
        return None
    return getattr(wrapper, "names", None)  # nn.Partitioned and nn.LogicallyPartitioned


def _names(path: str, names, ndim: int) -> tuple[str | None, ...] | None:
    """Logical axes as a tuple of str | None, one per dim; ShardspecError otherwise."""
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence | jax.sharding.PartitionSpec):
        raise ShardspecError(
            f"parameter {path!r}: axes {names!r} are not a sequence of logical names",
            path="axes",
            hint="give a tuple with one name (or None) per dimension",
        )
    names = tuple(names)
    bad = [n for n in names if n is not None and not isinstance(n, str)]
    if bad:
        raise ShardspecError(
            f"parameter {path!r}: axis name {bad[0]!r} is not a string",
            path="axes",
            hint="one logical name (or None) per dimension; several mesh axes on one "
            "dimension are the strategy's rules, not the model's names",
        )
    if len(names) != ndim:
        raise ShardspecError(
            f"parameter {path!r}: {len(names)} axes {names} for {ndim} dimensions",
            path="axes",
            hint="give one logical name (or None) per dimension",
        )
    return names


def _axes_per_leaf(treedef, axes) -> list:
    try:
        return treedef.flatten_up_to(axes)
    except (ValueError, TypeError) as e:
        raise ShardspecError(
            f"axes= does not have the structure of the parameters: {e}",
            path="axes",
            hint="give a tree like the parameters whose leaves are tuples of logical names (or None)",
        ) from None


def _axes_not_for(what: str) -> ShardspecError:
    return ShardspecError(
        f"axes= is for plain pytrees; {what} carries its own logical axes",
        path="axes",
        hint="leave axes= out, or override axes with the strategy's params:",
    )


def _is_tree(x) -> bool:
    """A container jax can flatten (dict, list, tuple, State, registered nodes), not a bare leaf."""
    if isinstance(x, (Mapping, list, tuple, nnx.State)):
        return True
    leaves = jax.tree_util.tree_leaves(x, is_leaf=_is_wrapper)
    return not (len(leaves) == 1 and leaves[0] is x)


def _is_linen_module(x) -> bool:
    import flax.linen as nn

    return isinstance(x, nn.Module)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _describe(x) -> str:
    if x is None:
        return "None"
    if isinstance(x, (int, float, complex, bool)):
        return f"a number ({x!r})"
    if isinstance(x, str):
        return f"a string ({x!r})"
    if callable(x) and not hasattr(x, "shape"):
        return f"a function ({getattr(x, '__qualname__', type(x).__name__)})"
    return f"a {type(x).__name__}"
