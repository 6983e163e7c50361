"""`shardspec` commands. Each is parse -> call the library -> print -> exit code."""

from __future__ import annotations

import enum
from typing import List, Optional

import typer

from ._common import (CoordinatorOpt, NumProcessesOpt, ProcessIdOpt, handle_errors, join_cluster,
                      load_strategy, simulate_devices)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="shardspec: compile, explain, check and serve JAX sharding strategies.")

ModelOpt = typer.Option(None, "--model", "-m", help="Model preset or checkpoint directory; overrides `model:`.")
SetOpt = typer.Option(None, "--set", help="Override a strategy key: --set runtime.routing=least_tokens.")


class Format(str, enum.Enum):
    text = "text"
    json = "json"


@app.callback()
def _main(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    ctx.obj = {"debug": debug}


@app.command()
@handle_errors
def validate(ctx: typer.Context, strategy: str = typer.Argument(..., help="Strategy YAML file."),
             model: Optional[str] = ModelOpt, set: Optional[List[str]] = SetOpt):
    """Check a strategy, the model-dependent rules too, without touching a device."""
    from shardspec.plan import compile

    loaded = load_strategy(strategy, model, set)
    plan = compile(loaded, abstract_mesh=True)
    shape = " × ".join(f"{a} {n}" for a, n in plan.mesh_shape.items())
    typer.echo(f"ok: {strategy}: {loaded.name} on {loaded.model}, mesh {shape}, {plan.dp_ranks} DP ranks")


@app.command()
@handle_errors
def explain(ctx: typer.Context, strategy: str = typer.Argument(..., help="Strategy YAML file."),
            model: Optional[str] = ModelOpt, set: Optional[List[str]] = SetOpt,
            format: Format = typer.Option(Format.text, "--format", "-f", help="text or json."),
            hlo: bool = typer.Option(False, "--hlo", help="Compile the serving step and count its "
                                     "collectives; check the strategy's `expect:` budget."),
            coordinator: Optional[str] = CoordinatorOpt, num_processes: Optional[int] = NumProcessesOpt,
            process_id: Optional[int] = ProcessIdOpt):
    """Print the whole layout: mesh, rules, every parameter, the KV cache, bytes per device.

    Shapes only; in a cluster (--coordinator ...) the mesh is the real one, with
    each device's process, and process 0 prints it. --hlo compiles one decode and
    one prefill step on the strategy's devices (simulated on CPU; nothing is
    allocated) and exits 2 when a count exceeds the `expect:` budget.
    """
    from shardspec import distributed
    from shardspec.explanation import explain as explain_plan
    from shardspec.hlo import check_budget, hlo_report
    from shardspec.plan import compile

    loaded = load_strategy(strategy, model, set)
    cluster = (coordinator, num_processes, process_id) != (None, None, None)
    plan = compile(loaded, abstract_mesh=True)  # every user error before joining
    if cluster and join_cluster(loaded, coordinator, num_processes, process_id) > 1:
        plan = compile(loaded)
    elif hlo:  # the step is compiled on a concrete mesh
        simulate_devices(loaded)
        plan = compile(loaded)
    report = hlo_report(plan) if hlo else None
    main = distributed.is_main()
    distributed.leave()
    if main:
        typer.echo(explain_plan(plan, format=format.value, hlo=report), nl=False)
    if report is not None:
        check_budget(plan, report)


@app.command()
@handle_errors
def check(ctx: typer.Context, strategy: str = typer.Argument(..., help="Strategy YAML file."),
          model: Optional[str] = ModelOpt, set: Optional[List[str]] = SetOpt,
          seed: int = typer.Option(0, help="Seed of the parameters and the batch."),
          coordinator: Optional[str] = CoordinatorOpt, num_processes: Optional[int] = NumProcessesOpt,
          process_id: Optional[int] = ProcessIdOpt):
    """Compare the sharded model with the unsharded one on a fixed random batch (exit 1 on a mismatch).

    In a cluster every process compares the whole result; process 0 prints it.
    A strategy with `expect:` first has its collective budget checked against
    the compiled serving step (exit 2 when a count exceeds it).
    """
    loaded = load_strategy(strategy, model, set)
    join_cluster(loaded, coordinator, num_processes, process_id)
    from shardspec import distributed
    from shardspec.check import check as check_plan
    from shardspec.check import check_collectives
    from shardspec.plan import compile

    plan = compile(loaded)
    budget = check_collectives(plan) if loaded.expect else None  # a blown budget: exit 2 first
    result = check_plan(plan, seed=seed)
    main = distributed.is_main()
    distributed.leave()
    if main:
        typer.echo(result.summary())
        if budget:
            typer.echo(budget)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def models(ctx: typer.Context):
    """List the model presets."""
    from shardspec.models.presets import PRESETS

    typer.echo(f"{'name':<14} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'mlp':>6} {'vocab':>7} "
               f"{'params':>8}  note")
    for name, c in PRESETS.items():
        typer.echo(f"{name:<14} {c.num_layers:>6} {c.hidden_size:>6} {c.num_heads:>5} {c.num_kv_heads:>3} "
                   f"{c.mlp_size:>6} {c.vocab_size:>7} {_count(c):>8}  {'shape only' if c.shape_only else ''}"
                   .rstrip())


def _count(c) -> str:
    from shardspec.models.registry import parameter_count

    total = parameter_count(c)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if total >= size:
            return f"{total / size:.1f}{unit}"
    return str(total)


from .run import run  # noqa: E402  (registered below, next to the other commands)

app.command()(handle_errors(run))
from .launch import launch  # noqa: E402

app.command(context_settings={"allow_interspersed_args": False})(handle_errors(launch))


def main():
    app()


if __name__ == "__main__":
    main()
