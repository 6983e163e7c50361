"""What every command shares: loading a strategy with its overrides, notes, error exits."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from shardspec.errors import Problem, ShardspecError
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
            raise ShardspecError(
                Problem(f"{item!r} is not key.path=value", path="--set", hint="e.g. --set runtime.routing=least_tokens")
            )
        out[key.strip()] = value
    return out


def load_strategy(path: str, model: str | None, sets: list[str] | None) -> Strategy:
    if not path.strip():  # else load() would read '' as YAML text: "the file is empty"
        raise ShardspecError("the strategy path is empty", path="STRATEGY", hint="give a strategy file")
    strategy = load(Path(path), overrides=parse_sets(sets))  # a path, even one load() could read as YAML
    return strategy.with_model(model) if model is not None else strategy


def factory_of(strategy: Strategy):
    """For a `package.module:factory` `model:` (or `--model`): a function giving that model
    (call it once the devices are made: a factory may load weights onto them); else None."""
    from shardspec.model_factory import load_factory, names_a_factory

    if not names_a_factory(strategy.model):
        return None
    return lambda: load_factory(strategy.model, strategy.source)


def placed_in_place(plan, module):
    """An outside module a factory made, its weights moved into the plan's shardings in place:
    the factory's own copy is freed, never held beside the engine's (None stays None)."""
    if module is None:
        return None
    from flax import nnx

    from shardspec.placement import apply

    nnx.update(module, nnx.state(apply(plan, module)))
    return module


def use_compilation_cache(ctx: typer.Context) -> None:
    """Turn on JAX's persistent compilation cache as `--compilation-cache` says (commands that compile)."""
    from shardspec.compilation_cache import enable_for_command

    enable_for_command((ctx.obj or {}).get("compilation_cache"))


def cluster_given(*flags) -> bool:
    """Whether any of --coordinator / --num-processes / --process-id (or their variables) is set."""
    return any(f is not None for f in flags)


def echo_notes(notes: Iterable[str]) -> None:
    for note in notes:
        typer.echo(note, err=True)


def _where(err: BaseException) -> str:
    """The innermost shardspec function an exception passed through: `shardspec.layouts.param_layouts (line 88)`."""
    where = "shardspec"
    for frame, line in traceback.walk_tb(err.__traceback__):
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] == "shardspec":
            where = f"{module}.{frame.f_code.co_name} (line {line})"
    return where


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
            raise typer.Exit(USER_ERROR) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as err:  # an internal error: ours, not the user's
            if debug:
                traceback.print_exc()
            typer.echo(
                f"internal error in {_where(err)}: {type(err).__name__}: {err} "
                "(rerun with --debug for the traceback, and please report it)",
                err=True,
            )
            raise typer.Exit(INTERNAL_ERROR) from None

    return wrapper
