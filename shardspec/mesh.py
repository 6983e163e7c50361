"""The device mesh: always the four axes (data, attn_dp, expert, model).

All axes are `Auto` on purpose: the plan places parameters and pins
activations with sharding constraints and lets GSPMD insert the collectives
between layouts (JAX >= 0.9 would otherwise default to Explicit axes).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh

from .errors import ShardspecError
from .strategy import MESH_AXES, Strategy

_AUTO = (AxisType.Auto,) * len(MESH_AXES)


def mesh_shape(strategy: Strategy, attention_data: int) -> dict[str, int]:
    p = strategy.parallelism
    return {"data": p.data, "attn_dp": attention_data, "expert": p.expert,
            "model": p.tensor // attention_data}


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
    """A mesh with sizes and names but no devices: for explain and validate."""
    return AbstractMesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=_AUTO)


def device_mesh(shape: Mapping[str, int], strategy: Strategy,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A concrete mesh over exactly the devices the strategy asks for.

    `jax.make_mesh` would silently take the first devices when there are more;
    here a subset is used only when asked for, by passing `devices` or by
    writing `devices:` in the strategy.
    """
    need = math.prod(shape.values())
    if devices is None:
        available = jax.devices()
        if strategy.devices is not None and len(available) >= need:
            devices = available[:need]
        elif len(available) != need:
            raise strategy.source.error(
                "parallelism", f"the strategy uses {need} devices but {len(available)} are present",
                f"set devices: {need} to use a subset, or change parallelism to use {len(available)}")
        else:
            devices = available
    if len(devices) != need:
        raise ShardspecError(f"the strategy uses {need} devices but {len(devices)} were given")
    # make_mesh orders the devices by physical topology where there is one (TPU).
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=_AUTO,
                         devices=list(devices))


def device_ids(shape: Mapping[str, int], mesh: Mesh | AbstractMesh) -> np.ndarray:
    """Device ids laid out on the mesh; an abstract mesh numbers them in order."""
    if isinstance(mesh, Mesh):
        return np.vectorize(lambda d: d.id)(mesh.devices)
    return np.arange(math.prod(shape.values())).reshape([shape[a] for a in MESH_AXES])


def simulate_cpu_devices(count: int) -> bool:
    """Ask JAX for `count` simulated CPU devices; True if it will take effect.

    Must run before JAX creates its backends (the first device query). On an
    accelerator the setting is harmless: it only shapes the CPU backend.
    """
    from jax._src import xla_bridge  # backends_are_initialized has no public home

    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_num_cpu_devices", count)
    return True
