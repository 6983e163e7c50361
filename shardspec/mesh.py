"""The device mesh: always the four axes (data, attn_dp, expert, model).

All axes are `Auto` on purpose: the plan places parameters and pins
activations with sharding constraints and lets GSPMD insert the collectives
between layouts (JAX >= 0.9 would otherwise default to Explicit axes).

Across processes (hosts) the mesh is a hybrid mesh: `multihost:` names the part
of each axis that crosses hosts, and that part is the slowest-varying one, so
{data: 2} on data 4 puts data 0-1 on the first host and data 2-3 on the second.
In one process `multihost` is not in effect: the same strategy file then runs
on one host's devices unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh

from .errors import ShardspecError
from .sizes import device_count, multihost_problem
from .strategy import MESH_AXES, Strategy

_AUTO = (AxisType.Auto,) * len(MESH_AXES)


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
    """A mesh with sizes and names but no devices: for explain and validate."""
    return AbstractMesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=_AUTO)


def device_mesh(shape: Mapping[str, int], strategy: Strategy, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A concrete mesh over exactly the devices the strategy asks for.

    `jax.make_mesh` would silently take the first devices when there are more;
    here a subset is used only when asked for, by passing `devices` or by
    writing `devices:` in the strategy.
    """
    need = device_count(shape)
    if jax.process_count() > 1:
        return _hybrid_mesh(shape, strategy, devices)
    if devices is None:
        available = jax.devices()
        if strategy.devices is not None and len(available) >= need:
            devices = available[:need]
        elif len(available) != need:
            raise strategy.source.error(
                "parallelism",
                f"the strategy uses {need} devices but {len(available)} are present",
                f"set devices: {need} to use a subset, or change parallelism to use {len(available)}",
            )
        else:
            devices = available
    if len(devices) != need:
        raise ShardspecError(f"the strategy uses {need} devices but {len(devices)} were given")
    # make_mesh orders the devices by physical topology where there is one (TPU).
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=_AUTO, devices=list(devices))


def cross_host(shape: Mapping[str, int], strategy: Strategy) -> dict[str, int]:
    """The part of each mesh axis that crosses hosts (DCN): {data: 2, attn_dp: 1, ...}.

    The load step checks the factors it can; attn_dp and model are known only
    here when `attention_data: auto`.
    """
    factors = {a: int(strategy.multihost.get(a, 1)) for a in MESH_AXES}
    for axis, factor in factors.items():
        if problem := multihost_problem(axis, factor, shape[axis]):
            raise strategy.source.error(f"multihost.{axis}", *problem)
    return factors


def hosts(strategy: Strategy) -> int:
    """Processes the strategy's mesh spans: the product of the `multihost` factors."""
    return math.prod(strategy.multihost.values())


def _hybrid_mesh(shape: Mapping[str, int], strategy: Strategy, devices: Sequence[jax.Device] | None) -> Mesh:
    """A mesh over every process's devices, each host holding the block `multihost` gives it."""
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    need, dcn = device_count(shape), cross_host(shape, strategy)
    if len(devices) != need:
        raise strategy.source.error(
            "parallelism",
            f"the strategy uses {need} devices but the {jax.process_count()} processes have {len(devices)}",
            f"change parallelism to use {len(devices)}, or give each process {need // jax.process_count()} devices",
        )
    # Multi-slice TPUs mark their devices with a slice; elsewhere each process is a host.
    slices = {getattr(d, "slice_index", None) for d in devices}
    by_slice = None not in slices and len(slices) > 1
    granules = len(slices) if by_slice else len({d.process_index for d in devices})
    unit = "slices" if by_slice else "processes"
    if math.prod(dcn.values()) != granules:
        raise strategy.source.error(
            "multihost", _mismatch(dcn, granules, unit), _multihost_hint(shape, dcn, granules, unit)
        )
    ici = [shape[a] // dcn[a] for a in MESH_AXES]
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, [dcn[a] for a in MESH_AXES], devices, process_is_granule=not by_slice
    )
    return Mesh(grid, MESH_AXES, axis_types=_AUTO)


def _mismatch(dcn: Mapping[str, int], granules: int, unit: str) -> str:
    crossing = {a: f for a, f in dcn.items() if f > 1}
    if not crossing:
        return f"no axis crosses hosts, but {granules} {unit} joined"
    product = " × ".join(f"{a} {f}" for a, f in crossing.items())
    return f"{product} = {math.prod(crossing.values())} {unit}, but {granules} {unit} joined"


def _multihost_hint(shape: Mapping[str, int], dcn: Mapping[str, int], granules: int, unit: str) -> str:
    axis = next((a for a in MESH_AXES if shape[a] % granules == 0), None)
    example = f" (e.g. multihost: {{{axis}: {granules}}})" if axis else ""
    want = math.prod(dcn.values())
    return f"set multihost factors that multiply to {granules}{example}, or run {want} " + (
        unit if want > 1 else {"processes": "process", "slices": "slice"}[unit]
    )


def process_ids(shape: Mapping[str, int], strategy: Strategy, mesh: Mesh | AbstractMesh) -> np.ndarray | None:
    """The process holding each mesh position; None when the mesh lives in one process.

    A device mesh answers from its devices; an abstract one from `multihost`, in
    the order a hybrid mesh uses (hosts numbered row-major over the cross-host
    factors, each host a contiguous block of every axis).
    """
    if isinstance(mesh, Mesh):
        ids = np.vectorize(lambda d: d.process_index)(mesh.devices)
        return ids if len(np.unique(ids)) > 1 else None
    if hosts(strategy) == 1:
        return None
    dcn = cross_host(shape, strategy)
    grids = np.indices([shape[a] for a in MESH_AXES])  # [4, *mesh]: each position's index per axis
    blocks = tuple(grids[i] // (shape[a] // dcn[a]) for i, a in enumerate(MESH_AXES))
    return np.ravel_multi_index(blocks, [dcn[a] for a in MESH_AXES])


def device_ids(shape: Mapping[str, int], mesh: Mesh | AbstractMesh) -> np.ndarray:
    """Device ids laid out on the mesh; an abstract mesh numbers them in order."""
    if isinstance(mesh, Mesh):
        return np.vectorize(lambda d: d.id)(mesh.devices)
    return np.arange(device_count(shape)).reshape([shape[a] for a in MESH_AXES])


def simulate_cpu_devices(count: int) -> bool:
    """Ask JAX for `count` simulated CPU devices; True if it will take effect.

    Must run before JAX creates its backends (the first device query). On an
    accelerator the setting is harmless: it only shapes the CPU backend. In a
    cluster `count` is this process's share: each process makes its own.
    """
    from jax._src import xla_bridge  # backends_are_initialized has no public home

    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_num_cpu_devices", count)
    return True
