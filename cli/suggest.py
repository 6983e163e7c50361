"""`shardspec suggest`: rank every strategy for a model, a set of devices and a workload."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from shardspec.errors import ShardspecError

from ._options import Format

Dtype = enum.Enum("Dtype", {d: d for d in ("bfloat16", "float16", "float32")}, type=str)
CALIBRATED = 5  # candidates --calibrate measures without --top
KvDtype = enum.Enum("KvDtype", {d: d for d in ("auto", "bfloat16", "float32", "float8_e4m3fn")}, type=str)


def suggest(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset or checkpoint directory.")],
    devices: Annotated[str, typer.Option("--devices", metavar="KIND:N", help="Device kind and count: h200:8.")],
    hosts: Annotated[int | None, typer.Option("--hosts", min=1, help="Hosts (default: as few as fit).")] = None,
    prompt_len: Annotated[str, typer.Option("--prompt-len", help="Prompt length or LOW:HIGH.")] = "1024",
    output_len: Annotated[str, typer.Option("--output-len", help="Output length or LOW:HIGH.")] = "256",
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight.")] = 32,
    prompts: Annotated[
        str | None, typer.Option("--prompts", help="Request JSONL file: its lengths replace --prompt/--output-len.")
    ] = None,
    max_ttft_ms: Annotated[float | None, typer.Option("--max-ttft-ms", help="Time to first token limit.")] = None,
    max_tpot_ms: Annotated[float | None, typer.Option("--max-tpot-ms", help="Time per output token limit.")] = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Parameters and activations.")] = Dtype.bfloat16,
    kv_dtype: Annotated[KvDtype, typer.Option("--kv-dtype", help="KV cache (auto: --dtype).")] = KvDtype.auto,
    device_spec: Annotated[
        str | None, typer.Option("--device-spec", help="YAML file of device kinds to add to the catalog.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text or json.")] = Format.text,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Show the best K that fit.")] = None,
    write: Annotated[str | None, typer.Option("--write", help="Write the best strategy to this YAML file.")] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate", help="Measure the best --top (default 5) on this machine's devices instead of the roofline."
        ),
    ] = False,
):
    """Which strategy to write: every parallelism for the devices, compiled from shapes and
    ranked by a roofline (output tokens/s per device among those that fit and meet the limits).

    Exit 2 when nothing fits, naming what would.
    """
    from shardspec.files import check_writable, write_text
    from shardspec.suggest import device_kinds, parse_devices, parse_span, suggest, what_would_fit, workload
    from shardspec.suggest.report import as_json, strategy_yaml, text

    if write:
        check_writable(write, "--write")
    kind, count = parse_devices(devices, device_kinds(device_spec))
    limits = {"max_ttft_ms": max_ttft_ms, "max_tpot_ms": max_tpot_ms}
    if prompts is not None:
        wl = _from_file(model, prompts, concurrency, limits)
    else:
        spans = parse_span(prompt_len, "--prompt-len"), parse_span(output_len, "--output-len")
        wl = workload(*spans, concurrency, **limits)
    found = suggest(model, kind, count, wl, hosts=hosts, dtype=dtype.value, kv_dtype=kv_dtype.value)
    if calibrate:
        from shardspec.suggest.calibrate import calibrated

        found = calibrated(found, top or CALIBRATED)
    typer.echo(as_json(found) if fmt is Format.json else text(found, top), nl=fmt is Format.json)
    if found.best is None:
        raise ShardspecError(f"no strategy fits {count} × {kind.name}", hint=what_would_fit(found))
    if write:
        write_text(write, strategy_yaml(found, found.best), "--write")


def _from_file(model: str, prompts: str, concurrency: int, limits: dict):
    """The workload of a request file, its prompts read as `run --prompts` reads them."""
    from shardspec.load import load
    from shardspec.plan import compile
    from shardspec.runtime.workload import requests_for
    from shardspec.suggest.workload import from_requests

    plan = compile(load({"model": model, "devices": 1, "kv_cache": {"num_pages": 1 << 16}}), abstract_mesh=True)
    return from_requests(requests_for(plan, prompts=prompts), concurrency, **limits)
