"""The arguments and options commands share, as `Annotated` aliases (one definition each)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from shardspec.cluster_env import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from shardspec.compilation_cache import ENV as ENV_COMPILATION_CACHE

MAX_SEED = 2**32 - 1  # a uint32: what jax's PRNG keys and numpy's generators take
# `serve --tool-call-parser`: how a model writes tool calls (the server's tool_calls.PARSERS, spelled out
# here so that --help lists them without importing the server)
ToolCallParser = enum.Enum("ToolCallParser", {"hermes": "hermes", "llama3_json": "llama3_json"}, type=str)

Format = enum.Enum("Format", {"text": "text", "json": "json"}, type=str)  # --format of explain and suggest

StrategyArg = Annotated[str, typer.Argument(help="Strategy YAML file.", show_default=False)]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model preset or checkpoint directory; overrides `model:`.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a strategy key: --set runtime.routing=least_tokens (repeatable)."),
]
# The cluster a command joins (shardspec/distributed.py); `shardspec launch` sets the variables.
CoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        envvar=ENV_COORDINATOR,
        metavar="HOST:PORT",
        help="Process 0's address: join a cluster of --num-processes processes.",
    ),
]
NumProcessesOpt = Annotated[
    int | None,
    typer.Option("--num-processes", envvar=ENV_NUM_PROCESSES, min=1, help="Processes in the cluster (1: join none)."),
]
ProcessIdOpt = Annotated[
    int | None, typer.Option("--process-id", envvar=ENV_PROCESS_ID, min=0, help="This process's id, 0 to N-1.")
]
CompilationCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--compilation-cache",
        envvar=ENV_COMPILATION_CACHE,
        metavar="DIR|off",
        help="Where compiled programs are kept for the next command (default ~/.cache/shardspec/jax; off: nowhere).",
    ),
]
