"""`shardspec` commands. Each is parse -> call the library -> print -> exit code."""

from __future__ import annotations

import enum
from typing import List, Optional

import typer

from ._common import handle_errors, load_strategy, simulate_devices

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
            format: Format = typer.Option(Format.text, "--format", "-f", help="text or json.")):
    """Print the whole layout: mesh, rules, every parameter, the KV cache, bytes per device."""
    from shardspec.explain import explain as explain_plan
    from shardspec.plan import compile

    plan = compile(load_strategy(strategy, model, set), abstract_mesh=True)
    typer.echo(explain_plan(plan, format=format.value), nl=False)


@app.command()
@handle_errors
def check(ctx: typer.Context, strategy: str = typer.Argument(..., help="Strategy YAML file."),
          model: Optional[str] = ModelOpt, set: Optional[List[str]] = SetOpt,
          seed: int = typer.Option(0, help="Seed of the parameters and the batch.")):
    """Compare the sharded model with the unsharded one on a fixed random batch (exit 1 on a mismatch)."""
    loaded = load_strategy(strategy, model, set)
    simulate_devices(loaded)
    from shardspec.check import check as check_plan
    from shardspec.plan import compile

    result = check_plan(compile(loaded), seed=seed)
    typer.echo(result.summary())
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
    per_layer = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) + 3 * c.hidden_size * c.mlp_size
    total = c.num_layers * per_layer + c.vocab_size * c.hidden_size * (1 if c.tie_embeddings else 2)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if total >= size:
            return f"{total / size:.1f}{unit}"
    return str(total)


from .run import run  # noqa: E402  (registered below, next to the other commands)

app.command()(handle_errors(run))


def main():
    app()


if __name__ == "__main__":
    main()
