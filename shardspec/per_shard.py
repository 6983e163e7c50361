"""`Layout.per_shard`: run a function on each device's share of its arrays, by logical axes.

GSPMD decides a layer's communication from its sharding constraints; some
layers need to decide it themselves. A sparse MoE layer computes, on each
device, the experts it holds for the tokens it holds, which no einsum
expresses: it runs per device (`jax.shard_map`) and one reduction combines the
devices' partial outputs. `per_shard` builds that map from logical axes, so the
model still names no mesh axis:

    out = layout.per_shard(fn, in_axes, out_axes, sum_over)(*arrays)

Each array is split by its logical axes under the plan's rules (a dimension
the mesh axes do not divide stays whole); `fn` sees local blocks and returns a
partial sum over the mesh axes of the `sum_over` names. Those are reduced where
the output wants them split (a reduce-scatter: each device keeps its part) and
summed everywhere else (an all-reduce).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

Axes = Sequence[str | None]


def _entry_axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _entry(axes: Sequence[str]):
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def fit(spec: P, shape: Sequence[int], mesh_shape) -> P:
    """`spec` with every entry whose mesh axes do not divide its dimension dropped."""
    out = []
    for size, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        split = math.prod(mesh_shape[a] for a in _entry_axes(entry))
        out.append(entry if size % split == 0 else None)
    return P(*out)


def local_shape(shape: Sequence[int], spec: P, mesh_shape) -> tuple[int, ...]:
    return tuple(n // math.prod(mesh_shape[a] for a in _entry_axes(e)) for n, e in zip(shape, tuple(spec)))


def per_shard(plan, fn: Callable, in_axes: Sequence[Axes], out_axes: Axes, sum_over: Sequence[str] = ()) -> Callable:
    """`fn` on each device's blocks of its arguments (see the module docstring); `plan`
    gives the mesh and resolves logical axes (`plan.activation_spec`)."""
    mesh_shape = plan.mesh_shape
    reduce = [a for name in sum_over for a in _entry_axes(plan.activation_spec((name,))[0])]
    reduce = list(dict.fromkeys(reduce))  # each mesh axis once, in rule order

    def call(*arrays):
        in_specs = tuple(fit(plan.activation_spec(axes), x.shape, mesh_shape) for axes, x in zip(in_axes, arrays))
        local = [jax.ShapeDtypeStruct(local_shape(x.shape, s, mesh_shape), x.dtype) for x, s in zip(arrays, in_specs)]
        out_local = jax.eval_shape(fn, *local).shape
        wanted = tuple(plan.activation_spec(out_axes))
        # fn's result is laid out as `wanted` without the reduced axes; a reduced
        # axis `wanted` splits a dimension by is scattered there (if it divides).
        # A mesh axis that splits no argument (it did not divide) cannot split the result,
        # and there is nothing to sum over it: every device along it computed the same.
        split = {a for s in in_specs for e in s for a in _entry_axes(e)}
        base = [[a for a in _entry_axes(e) if a not in reduce and a in split] for e in wanted]
        scatter, total = {}, []
        for a in (a for a in reduce if a in split):
            dim = next((d for d, e in enumerate(wanted) if a in _entry_axes(e)), None)
            if dim is not None and out_local[dim] % (mesh_shape[a] * scatter.get(dim, 1)) == 0:
                scatter[dim] = scatter.get(dim, 1) * mesh_shape[a]
                base[dim].append(a)
                total.append(("scatter", a, dim))
            else:
                total.append(("sum", a, None))
        scattered = [(a, d) for kind, a, d in total if kind == "scatter"]
        summed = tuple(a for kind, a, _ in total if kind == "sum")

        def body(*blocks):
            out = fn(*blocks)
            for a, d in scattered:  # reduce-scatter first: the all-reduce then moves less
                out = jax.lax.psum_scatter(out, a, scatter_dimension=d, tiled=True)
            return jax.lax.psum(out, summed) if summed else out

        out_spec = P(*(_entry(axes) for axes in base))
        sharded = jax.shard_map(body, mesh=plan.mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)
        with jax.sharding.use_abstract_mesh(plan.mesh.abstract_mesh):  # from a forward on aliased names too
            return sharded(*arrays)

    return call
