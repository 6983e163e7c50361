"""`shardspec launch --local N -- COMMAND`: one cluster of N processes on this machine.

Each process runs `shardspec COMMAND` with the cluster in its environment and
devices/N simulated CPU devices of its own; `shardspec.local_cluster` starts,
relays and supervises them. This command checks COMMAND, prints, and exits
with the worst process's code.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated

import typer

from shardspec.errors import Problem, ShardspecError
from shardspec.local_cluster import run_local_cluster

COMMANDS = ("run", "check", "explain", "serve")  # the commands that join a cluster
CLUSTER_FLAGS = ("--coordinator", "--num-processes", "--process-id")


def launch(
    ctx: typer.Context,
    local: Annotated[int, typer.Option("--local", min=1, help="Processes to start on this machine.")],
    command: Annotated[
        list[str], typer.Argument(metavar="-- COMMAND...", help="The shardspec command each process runs.")
    ],
):
    """Run a shardspec command as N processes of one cluster on this machine.

    Each process gets devices/N simulated CPU devices; output lines are prefixed
    with the process id; the exit code is the worst one. If a process fails, the
    others are stopped.
    """
    _check_command(command)
    options = ctx.obj or {}
    debug = ["--debug"] if options.get("debug") else []
    cache = options.get("compilation_cache")  # the processes share this command's compilation cache
    cache = ["--compilation-cache", cache] if cache is not None else []
    result = run_local_cluster(
        [sys.executable, "-m", "shardspec.cli.main", *debug, *cache, *command],
        local,
        out=typer.echo,
        err=functools.partial(typer.echo, err=True),
        label=f"shardspec {' '.join(command)}",
    )
    if result.failed:
        typer.echo(f"error: launch: {result.summary}", err=True)
    raise typer.Exit(result.exit_code)


def _check_command(command: list[str]) -> None:
    """Only the commands that join a cluster, and none of the flags launch sets itself."""
    if not command or command[0] not in COMMANDS:
        got = repr(command[0]) if command else "nothing"
        raise ShardspecError(
            Problem(
                f"{got} is not a command that runs in a cluster",
                path="launch",
                hint=f"use one of {', '.join(COMMANDS)}: shardspec launch --local 2 -- "
                "run strategies/multihost_dp.yaml",
            )
        )
    given = [a for a in command if a.split("=")[0] in CLUSTER_FLAGS]
    if given:
        raise ShardspecError(
            Problem(
                f"{given[0].split('=')[0]} is set by launch",
                path="launch",
                hint="leave the cluster flags out of the command",
            )
        )
