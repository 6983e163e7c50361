"""`shardspec run`: serve a request file or a synthetic workload."""

from __future__ import annotations

import json
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shardspec.errors import Problem, ShardspecError

from ._common import (CoordinatorOpt, NumProcessesOpt, ProcessIdOpt, join_cluster,
                      load_strategy)


def _span(text: str, flag: str) -> tuple[int, int]:
    """'16:96' or '32' -> (low, high)."""
    try:
        low, _, high = text.partition(":")
        span = (int(low), int(high or low))
    except ValueError:
        span = (0, -1)
    if not 1 <= span[0] <= span[1]:
        raise ShardspecError(Problem(f"{text!r} is not a length or a range LOW:HIGH", path=flag,
                                     hint="e.g. 16:96, both at least 1"))
    return span


def synthetic_requests(n: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab: int,
                       seed: int) -> list[dict]:
    """`n` requests with uniform random lengths and tokens; they ignore EOS to run their length."""
    rng = np.random.default_rng(seed)
    ins = rng.integers(input_len[0], input_len[1] + 1, n)
    outs = rng.integers(output_len[0], output_len[1] + 1, n)
    return [{"id": str(i), "prompt_token_ids": rng.integers(0, vocab, ins[i]).tolist(),
             "max_tokens": int(outs[i]), "ignore_eos": True} for i in range(n)]


def run(ctx: typer.Context,
        strategy: str = typer.Argument(..., help="Strategy YAML file."),
        model: Optional[str] = typer.Option(None, "--model", "-m",
                                            help="Model preset or checkpoint directory; overrides `model:`."),
        prompts: Optional[str] = typer.Option(None, "--prompts", help="Request JSONL file (else synthetic)."),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="Write outputs as JSONL, input order."),
        num_requests: int = typer.Option(32, "--num-requests", "-n", min=1, help="Synthetic requests."),
        input_len: str = typer.Option("16:96", "--input-len", help="Synthetic prompt length or LOW:HIGH."),
        output_len: str = typer.Option("16:32", "--output-len", help="Synthetic output length or LOW:HIGH."),
        seed: int = typer.Option(0, help="Seed of the parameters and the synthetic workload."),
        json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object on stdout."),
        set: Optional[List[str]] = typer.Option(None, "--set", help="Override a strategy key: key.path=value."),
        coordinator: Optional[str] = CoordinatorOpt, num_processes: Optional[int] = NumProcessesOpt,
        process_id: Optional[int] = ProcessIdOpt):
    """Serve requests with the DP scheduler and input packer; print a summary.

    Across processes every process reads the same requests and runs the same
    scheduler; process 0 alone writes --output, --json and the summary.
    """
    loaded = load_strategy(strategy, model, set)
    from shardspec.plan import compile
    from shardspec.runtime.requests_io import read_requests, write_outputs

    plan = compile(loaded, abstract_mesh=True)  # every user error before any device work
    vocab, max_len = plan.model.geometry.vocab_size, plan.runtime.max_request_len
    if prompts:
        from shardspec.tokenizer import load_tokenizer  # a checkpoint's: `prompt` text in requests

        requests = read_requests(prompts, vocab_size=vocab, max_model_len=max_len,
                                 tokenizer=load_tokenizer(plan.model.checkpoint))
    else:
        requests = synthetic_requests(num_requests, _span(input_len, "--input-len"),
                                      _span(output_len, "--output-len"), vocab, seed)
        from shardspec.runtime.requests_io import make_request

        requests = [make_request(r, default_id=r["id"], vocab_size=vocab, max_model_len=max_len)
                    for r in requests]
    join_cluster(loaded, coordinator, num_processes, process_id)
    from shardspec import distributed
    from shardspec.runtime.engine import Engine

    if differ := distributed.disagreeing(repr(requests)):
        raise ShardspecError(f"processes {differ} read other requests than process 0",
                             hint="give every process the same --prompts file and flags")
    main = distributed.is_main()
    err = Console(stderr=True, quiet=not main)
    engine = Engine(compile(loaded), seed=seed)
    with err.status("compiling the step for every token bucket"):
        engine.warmup()
    order = {r.id: i for i, r in enumerate(requests)}
    done: list = [None] * len(requests)
    columns = (TextColumn("serving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("serving", total=len(requests))
        for out in engine.stream(requests):
            done[order[out.id]] = out
            progress.advance(task)
    if differ := distributed.disagreeing(repr(done)):  # never expected: the scheduler is deterministic
        raise RuntimeError(f"processes {differ} served other outputs than process 0")
    distributed.leave()
    if not main:
        return
    if output:
        write_outputs(output, done)
    metrics = engine.metrics.to_json()
    if json_out:
        typer.echo(json.dumps(metrics))
    (err if json_out else Console()).print(_summary(loaded.name, plan, metrics, done))


def _summary(name, plan, metrics: dict, outputs) -> Table:
    table = Table(title=f"{name}: {len(outputs)} requests on {plan.dp_ranks} DP ranks", show_header=False)
    reasons = {}
    for out in outputs:
        reasons[out.finish_reason] = reasons.get(out.finish_reason, 0) + 1
    rows = [("tokens/s", f"{metrics['tokens_per_s']:.1f}"),
            ("generated tokens", str(metrics["generated_tokens"])),
            ("padding efficiency", f"{metrics['padding_efficiency']:.3f} (real ÷ computed tokens)"),
            ("per-rank tokens", " ".join(map(str, metrics["per_rank_tokens"]))),
            ("max KV usage", f"{metrics['max_kv_usage']:.1%} (fullest rank)"),
            ("preemptions", str(metrics["preemptions"])),
            ("steps / compiles", f"{metrics['steps']} / {metrics['compiles']}"),
            ("host overhead", f"{metrics['host_overhead_fraction']:.1%}"),
            ("finish reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))]
    for key, value in rows:
        table.add_row(key, value)
    return table
