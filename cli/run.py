"""`shardspec run`: serve a request file or a synthetic workload."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shardspec.errors import Problem, ShardspecError

from ._common import echo_notes, factory_of, load_strategy, placed_in_place, use_compilation_cache
from ._options import MAX_SEED, CoordinatorOpt, ModelOpt, NumProcessesOpt, ProcessIdOpt, SetOpt, StrategyArg


def run(
    ctx: typer.Context,
    strategy: StrategyArg,
    model: ModelOpt = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="Request JSONL file (else synthetic).")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write outputs as JSONL, in input order.")
    ] = None,
    num_requests: Annotated[int, typer.Option("--num-requests", "-n", min=1, help="Synthetic requests.")] = 32,
    input_len: Annotated[str, typer.Option("--input-len", help="Synthetic prompt length or LOW:HIGH.")] = "16:96",
    output_len: Annotated[str, typer.Option("--output-len", help="Synthetic output length or LOW:HIGH.")] = "16:32",
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the parameters and the synthetic workload.")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as one JSON object on stdout.")] = False,
    overrides: SetOpt = None,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
):
    """Serve requests with the DP scheduler and input packer; print a summary.

    Across processes every process reads the same requests and runs the same
    scheduler; process 0 alone writes --output, --json and the summary.
    """
    from shardspec import distributed
    from shardspec.devices import compile_on_devices
    from shardspec.files import check_writable
    from shardspec.plan import compile
    from shardspec.runtime.offline import serve
    from shardspec.runtime.requests_io import write_outputs
    from shardspec.runtime.workload import Synthetic, requests_for

    loaded = load_strategy(strategy, model, overrides)
    use_compilation_cache(ctx)
    if output:
        check_writable(output, "--output")
    factory = factory_of(loaded)  # an outside model: its code makes it, on the devices
    synthetic = Synthetic(num_requests, _span(input_len, "--input-len"), _span(output_len, "--output-len"), seed)
    if factory is None:  # every user error before any device work
        requests = requests_for(compile(loaded, abstract_mesh=True), prompts=prompts, synthetic=synthetic)
    plan, notes, module = compile_on_devices(loaded, coordinator, num_processes, process_id, model=factory)
    module = placed_in_place(plan, module)
    if factory is not None:  # an outside model's requests: checked against the plan its factory's model gave
        requests = requests_for(plan, prompts=prompts, synthetic=synthetic)
    echo_notes(notes)
    main = distributed.is_main()
    err = Console(stderr=True, quiet=not main)
    columns = (TextColumn("serving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("serving", total=len(requests))
        served = serve(
            plan, requests, seed=seed, model=module, on_output=lambda _: progress.advance(task), status=err.status
        )
    distributed.leave()
    if not main:
        return
    if output:
        write_outputs(output, served.outputs)
    if json_out:
        typer.echo(json.dumps(served.metrics))
    (err if json_out else Console()).print(_summary(loaded.name, plan, served))


def _span(text: str, flag: str) -> tuple[int, int]:
    """'16:96' or '32' -> (low, high); `Synthetic.check` checks the range."""
    low, _, high = text.partition(":")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise ShardspecError(
            Problem(f"{text!r} is not a length or a range LOW:HIGH", path=flag, hint="e.g. 16:96, both at least 1")
        ) from None


def _summary(name, plan, served) -> Table:
    metrics, outputs = served.metrics, served.outputs
    table = Table(title=f"{name}: {len(outputs)} requests on {plan.dp_ranks} DP ranks", show_header=False)
    reasons: dict[str, int] = {}
    for out in outputs:
        reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
    rows = [
        ("tokens/s", f"{metrics['tokens_per_s']:.1f}"),
        ("generated tokens", str(metrics["generated_tokens"])),
        ("padding efficiency", f"{metrics['padding_efficiency']:.3f} (real ÷ computed tokens)"),
        ("per-rank tokens", " ".join(map(str, metrics["per_rank_tokens"]))),
        ("max KV usage", f"{metrics['max_kv_usage']:.1%} (fullest rank)"),
        ("preemptions", str(metrics["preemptions"])),
        (
            "prefix cache",
            f"{metrics['prefix_hit_rate']:.1%} of prompt tokens cached "
            f"({metrics['cached_prompt_tokens']} cached, {metrics['computed_prompt_tokens']} computed; "
            f"per rank {' '.join(f'{r:.0%}' for r in metrics['per_rank_prefix_hit_rate'])})",
        ),
        ("steps / compiles", f"{metrics['steps']} / {metrics['compiles']}"),
        (
            "host overhead",
            f"{metrics['host_overhead_fraction']:.1%} of the time the device waited for the host "
            f"(host work {metrics['host_work_fraction']:.1%}, the rest overlapped)",
        ),
        ("finish reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
