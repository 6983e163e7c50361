"""`shardspec` commands. Each is parse -> call the library -> print -> exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from ._common import cluster_given, echo_notes, factory_of, handle_errors, load_strategy, use_compilation_cache
from ._options import (
    MAX_SEED,
    CompilationCacheOpt,
    CoordinatorOpt,
    Format,
    ModelOpt,
    NumProcessesOpt,
    ProcessIdOpt,
    SetOpt,
    StrategyArg,
)
from .launch import launch
from .run import run
from .serve import serve
from .suggest import suggest


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (a bad flag value, a missing argument, an unknown command) as one
    `error:` line with exit code 2, like every other user error, instead of click's box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's errors (typer carries its own click)
            if getattr(e, "exit_code", 1) != 2:
                raise
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {e.format_message()}{where}", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="shardspec: compile, explain, check and serve JAX sharding strategies.",
)


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    compilation_cache: CompilationCacheOpt = None,
):
    ctx.obj = {"debug": debug, "compilation_cache": compilation_cache}


@app.command()
@handle_errors
def validate(ctx: typer.Context, strategy: StrategyArg, model: ModelOpt = None, overrides: SetOpt = None):
    """Check a strategy, the model-dependent rules too, without touching a device."""
    from shardspec.plan import compile

    loaded = load_strategy(strategy, model, overrides)
    plan = compile(loaded, abstract_mesh=True)
    shape = " × ".join(f"{a} {n}" for a, n in plan.mesh_shape.items())
    typer.echo(f"ok: {strategy}: {loaded.name} on {plan.model.name}, mesh {shape}, {plan.dp_ranks} DP ranks")


@app.command()
@handle_errors
def explain(
    ctx: typer.Context,
    strategy: StrategyArg,
    model: ModelOpt = None,
    overrides: SetOpt = None,
    output_format: Annotated[Format, typer.Option("--format", "-f", help="text or json.")] = Format.text,
    hlo: Annotated[
        bool,
        typer.Option("--hlo", help="Compile the serving step and count its collectives; check `expect:`."),
    ] = False,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
):
    """Print the whole layout: mesh, rules, every parameter, the KV cache, bytes per device.

    Shapes only; in a cluster (--coordinator ...) the mesh is the real one, with
    each device's process, and process 0 prints it. --hlo compiles one decode and
    one prefill step on the strategy's devices (simulated on CPU; nothing is
    allocated) and exits 2 when a count exceeds the `expect:` budget.
    """
    from shardspec import distributed
    from shardspec.devices import compile_on_devices
    from shardspec.explanation import explain as explain_plan
    from shardspec.hlo import check_budget, hlo_report
    from shardspec.plan import compile

    loaded = load_strategy(strategy, model, overrides)
    cluster = cluster_given(coordinator, num_processes, process_id)
    if hlo:
        use_compilation_cache(ctx)
    if cluster or hlo:
        if cluster:  # every user error before joining: a bad file never waits for its peers
            compile(loaded, abstract_mesh=True)
        plan, notes, _ = compile_on_devices(
            loaded, coordinator, num_processes, process_id, abstract_in_one_process=not hlo
        )
        echo_notes(notes)
    else:
        plan = compile(loaded, abstract_mesh=True)
    report = hlo_report(plan) if hlo else None
    main = distributed.is_main()
    distributed.leave()
    if main:
        typer.echo(explain_plan(plan, format=output_format.value, hlo=report), nl=False)
    if report is not None:
        check_budget(plan, report)


@app.command()
@handle_errors
def check(
    ctx: typer.Context,
    strategy: StrategyArg,
    model: ModelOpt = None,
    overrides: SetOpt = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the parameters and the batch.")] = 0,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
):
    """Compare the sharded model with the unsharded one on a fixed random batch (exit 1 on a mismatch).

    In a cluster every process compares the whole result; process 0 prints it.
    A strategy with `expect:` first has its collective budget checked against
    the compiled serving step (exit 2 when a count exceeds it).
    """
    from shardspec import distributed
    from shardspec.check import check as check_plan
    from shardspec.check import check_collectives
    from shardspec.devices import compile_on_devices

    loaded = load_strategy(strategy, model, overrides)
    use_compilation_cache(ctx)
    factory = factory_of(loaded)  # an outside model: its own unsharded forward is the reference
    plan, notes, module = compile_on_devices(loaded, coordinator, num_processes, process_id, model=factory)
    echo_notes(notes)
    budget = check_collectives(plan) if loaded.expect else None  # a blown budget: exit 2 first
    result = check_plan(plan, module, seed=seed)
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
    from shardspec.models.config import DeepSeekConfig
    from shardspec.models.presets import PRESETS
    from shardspec.models.registry import parameter_count

    w = max(map(len, PRESETS))
    typer.echo(
        f"{'name':<{w}} {'layers':>6} {'hidden':>6} {'heads':>5} {'kv':>3} {'mlp':>6} {'vocab':>7} {'params':>8}  note"
    )
    for name, c in PRESETS.items():
        latent = isinstance(c, DeepSeekConfig)  # no KV heads: one latent a token
        notes = [f"latent {c.kv_lora_rank} + rope {c.qk_rope_head_dim}"] if latent else []
        notes += ["shape only"] if c.shape_only else []
        kv = "mla" if latent else c.num_kv_heads
        typer.echo(
            f"{name:<{w}} {c.num_layers:>6} {c.hidden_size:>6} {c.num_heads:>5} {kv:>3} "
            f"{c.mlp_size:>6} {c.vocab_size:>7} {_count(parameter_count(c)):>8}  {', '.join(notes)}".rstrip()
        )


def _count(total: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if total >= size:
            return f"{total / size:.1f}{unit}"
    return str(total)


app.command()(handle_errors(run))
app.command()(handle_errors(serve))
app.command()(handle_errors(suggest))
app.command(context_settings={"allow_interspersed_args": False})(handle_errors(launch))


def main():
    app()


if __name__ == "__main__":
    main()
