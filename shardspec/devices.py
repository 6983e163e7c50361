"""The devices a command runs on: this host's (simulated on CPU), or a cluster's, joined first.

Commands validate a strategy on an abstract mesh before they touch a device or
join a cluster, so a bad file fails at once instead of waiting for its peers;
then `compile_on_devices` joins (if asked), makes this process's simulated CPU
devices and compiles the plan on the real mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from . import distributed
from . import mesh as mesh_lib
from .plan import ShardingPlan, compile
from .strategy import Strategy


def compile_on_devices(
    strategy: Strategy,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    abstract_in_one_process: bool = False,
    model: Callable[[], Any] | None = None,
) -> tuple[ShardingPlan, list[str], Any]:
    """(the plan on the strategy's devices, notes for the user, the outside model `model` gave or None).

    Joins the cluster given (or auto-detected for a `multihost` strategy) first.
    `abstract_in_one_process`: outside a cluster, an abstract mesh is enough
    (explain without --hlo draws the mesh from shapes alone). `model`: a function
    giving an outside model, called once the devices are made (a factory's arrays
    then land on them); else the strategy's `model:`.
    """
    processes, notes = join_for(strategy, coordinator, num_processes, process_id)
    abstract = abstract_in_one_process and processes == 1
    outside = model() if model is not None else None
    return compile(strategy, outside, abstract_mesh=abstract), notes, outside


def join_for(
    strategy: Strategy,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[int, list[str]]:
    """Join the cluster (given, or auto-detected for a `multihost` strategy), then make this
    process's simulated CPU devices; return (process count, notes for the user)."""
    processes = distributed.join(coordinator, num_processes, process_id, auto_detect=mesh_lib.hosts(strategy) > 1)
    notes = simulate_devices(strategy, processes)
    if processes == 1 and mesh_lib.hosts(strategy) > 1:
        factors = ", ".join(f"{a}: {f}" for a, f in strategy.multihost.items() if f > 1)
        notes.append(
            f"note: one process: multihost {{{factors}}} is not in effect "
            f"(to span processes: shardspec launch --local {mesh_lib.hosts(strategy)} -- ...)"
        )
    return processes, notes


def simulate_devices(strategy: Strategy, processes: int = 1) -> list[str]:
    """Give a CPU-only JAX this process's share of the strategy's devices; the note to show, once."""
    if strategy.device_count % processes:
        raise strategy.source.error(
            "parallelism",
            f"{strategy.device_count} devices do not split evenly over {processes} processes",
            f"use a multiple of {processes} devices, or another number of processes",
        )
    each = strategy.device_count // processes
    if not mesh_lib.simulate_cpu_devices(each) or jax.default_backend() != "cpu" or not distributed.is_main():
        return []
    split = f" ({each} in each of {processes} processes)" if processes > 1 else ""
    return [f"note: using {strategy.device_count} simulated CPU devices{split}"]
