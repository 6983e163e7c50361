"""What every command shares: loading a strategy with its overrides, error exits."""

from __future__ import annotations

import functools
import traceback
from typing import Callable

import typer

from shardspec.errors import ShardspecError, Problem
from shardspec.load import load
from shardspec.strategy import Strategy

USER_ERROR = 2
INTERNAL_ERROR = 1


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    """['runtime.routing=least_tokens'] -> {'runtime.routing': 'least_tokens'}."""
    out = {}
    for item in sets or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ShardspecError(Problem(f"{item!r} is not key.path=value", path="--set",
                                         hint="e.g. --set runtime.routing=least_tokens"))
        out[key.strip()] = value
    return out


def load_strategy(path: str, model: str | None, sets: list[str] | None) -> Strategy:
    strategy = load(path, overrides=parse_sets(sets))
    return strategy.with_model(model) if model else strategy


def simulate_devices(strategy: Strategy, processes: int = 1) -> None:
    """Give a CPU-only JAX the devices the strategy needs (this process's share); say so once."""
    from shardspec.mesh import simulate_cpu_devices

    if strategy.device_count % processes:
        raise strategy.source.error(
            "parallelism", f"{strategy.device_count} devices do not split evenly over {processes} processes",
            f"use a multiple of {processes} devices, or another number of processes")
    if simulate_cpu_devices(strategy.device_count // processes):
        import jax

        from shardspec.distributed import is_main

        if jax.default_backend() == "cpu" and is_main():
            each = f" ({strategy.device_count // processes} in each of {processes} processes)" if processes > 1 else ""
            typer.echo(f"note: using {strategy.device_count} simulated CPU devices{each}", err=True)


# The cluster a command joins (see shardspec/distributed.py); `shardspec launch` sets the variables.
CoordinatorOpt = typer.Option(None, "--coordinator", envvar="SHARDSPEC_COORDINATOR", metavar="HOST:PORT",
                              help="Process 0's address: join a cluster of --num-processes processes.")
NumProcessesOpt = typer.Option(None, "--num-processes", envvar="SHARDSPEC_NUM_PROCESSES", min=1,
                               help="Processes in the cluster (1: join none).")
ProcessIdOpt = typer.Option(None, "--process-id", envvar="SHARDSPEC_PROCESS_ID", min=0,
                            help="This process's id, 0 to N-1.")


def join_cluster(strategy: Strategy, coordinator: str | None, num_processes: int | None,
                 process_id: int | None) -> int:
    """Join the cluster (given, or auto-detected for a `multihost` strategy), then make this
    process's simulated devices; return the process count."""
    from shardspec import distributed
    from shardspec.mesh import hosts

    processes = distributed.join(coordinator, num_processes, process_id, auto_detect=hosts(strategy) > 1)
    simulate_devices(strategy, processes)
    if processes == 1 and hosts(strategy) > 1:
        factors = ", ".join(f"{a}: {f}" for a, f in strategy.multihost.items() if f > 1)
        typer.echo(f"note: one process: multihost {{{factors}}} is not in effect "
                   f"(to span processes: shardspec launch --local {hosts(strategy)} -- ...)", err=True)
    return processes


def handle_errors(command: Callable) -> Callable:
    """ShardspecError -> exit 2 with its lines; anything else -> exit 1.

    No traceback unless --debug (the app callback stores it in ctx.obj); the
    command takes `ctx: typer.Context` as its first parameter for that.
    """

    @functools.wraps(command)
    def wrapper(ctx: typer.Context, *args, **kwargs):
        debug = bool((ctx.obj or {}).get("debug"))
        try:
            return command(ctx, *args, **kwargs)
        except ShardspecError as err:
            if debug:
                traceback.print_exc()
            typer.echo(err.format(), err=True)
            raise typer.Exit(USER_ERROR)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:  # an internal error: ours, not the user's
            if debug:
                traceback.print_exc()
            typer.echo(f"internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)",
                       err=True)
            raise typer.Exit(INTERNAL_ERROR)

    return wrapper
