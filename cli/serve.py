"""`shardspec serve`: the OpenAI-compatible HTTP server (`shardspec/server/`)."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from ._common import echo_notes, factory_of, load_strategy, placed_in_place, use_compilation_cache
from ._options import (
    MAX_SEED,
    CoordinatorOpt,
    ModelOpt,
    NumProcessesOpt,
    ProcessIdOpt,
    SetOpt,
    StrategyArg,
    ToolCallParser,
)


def serve(
    ctx: typer.Context,
    strategy: StrategyArg,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="The model name clients ask for (default: the model's).")
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the parameters of a preset (no checkpoint).")
    ] = 0,
    strict_fields: Annotated[
        bool,
        typer.Option(
            "--strict-fields", help="Refuse request fields the server does not know (400) instead of ignoring them."
        ),
    ] = False,
    tool_call_parser: Annotated[
        ToolCallParser | None,
        typer.Option(
            "--tool-call-parser",
            help="How the model writes tool calls in its text, read back for chat tool_choice auto.",
        ),
    ] = None,
    overrides: SetOpt = None,
    coordinator: CoordinatorOpt = None,
    num_processes: NumProcessesOpt = None,
    process_id: ProcessIdOpt = None,
):
    """Serve the strategy's model over HTTP: /v1/completions, /v1/chat/completions (streamed
    with `stream: true`), /v1/models, /health and /metrics.

    Compiles every token bucket before it listens; SIGTERM or Ctrl-C stops accepting,
    aborts what is still running and exits 0. In a cluster process 0 takes HTTP and
    every process steps the same engine (README "Many hosts").
    """
    from shardspec import distributed
    from shardspec.devices import compile_on_devices
    from shardspec.plan import compile
    from shardspec.runtime.engine import Engine
    from shardspec.server.engine_loop import EngineLoop

    loaded = load_strategy(strategy, model, overrides)
    use_compilation_cache(ctx)
    factory = factory_of(loaded)  # an outside model: its code makes it, on the devices
    if factory is None:
        compile(loaded, abstract_mesh=True)  # every user error before any device work
    plan, notes, module = compile_on_devices(loaded, coordinator, num_processes, process_id, model=factory)
    echo_notes(notes)
    engine = Engine(plan, placed_in_place(plan, module), seed=seed)
    # uvicorn shuts down gracefully on SIGTERM, then raises it again under the handler found
    # at start: a no-op one makes that a clean exit 0. The other processes of a cluster
    # ignore it too: they stop when process 0 tells them, never halfway through a step.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if distributed.is_main():
        parser = tool_call_parser.value if tool_call_parser is not None else None
        name = served_model_name or plan.model.name
        _listen(
            engine, name, host, port, loaded.name, plan.dp_ranks, strict_fields=strict_fields, tool_call_parser=parser
        )
    else:
        engine.warmup()
        EngineLoop(engine, loaded.runtime.max_waiting).run()
    distributed.leave()


def _listen(engine, name: str, host: str, port: int, strategy_name: str, dp_ranks: int, **app_options) -> None:
    import uvicorn

    from shardspec.server.app import build_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM / Ctrl-C: end every stream now, then shut down
            app.state.engine_loop.drain()
            super().handle_exit(sig, frame)

    app = build_app(engine, name, **app_options)
    typer.echo(f"serving {name} ({strategy_name}, {dp_ranks} DP ranks) on http://{host}:{port}", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    Server(config).run()
