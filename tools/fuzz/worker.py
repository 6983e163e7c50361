"""The worker process: reads cases as JSON lines, runs each in-process, writes one result line per case.

Protocol (one JSON object a line): the worker writes {"ready": true} once warm and after each result's
housekeeping, a result per case, and {"recycle": true} before it exits past --recycle-mb (the parent
starts a fresh one).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .cli_run import run_cli
from .config import ENGINE_CONFIGS, FAST, RUN_STRATEGY, SMALL_ENGINE
from .engine_run import run_engine
from .files import FifoWriter, materialize
from .memory import rss_mb
from .traces import exc_summary


class Worker:
    """Runs cases in this process: the CLI through CliRunner, the engine directly."""

    def __init__(self, repo: Path, workdir: Path, targets: list[str]):
        import typer
        from typer.testing import CliRunner

        from shardspec.cli.main import app
        from shardspec.errors import ShardspecError

        self.repo, self.workdir, self.targets = repo, workdir, targets
        self.app, self.runner, self.ShardspecError = app, CliRunner(), ShardspecError
        self.engines: dict[str, object] = {}
        self.captured: dict | None = None
        original = typer.echo

        def echo(*args, **kwargs):  # handle_errors echoes an internal error inside its `except`
            exc = sys.exc_info()[1]
            if isinstance(exc, Exception) and not isinstance(exc, ShardspecError):
                self.captured = exc_summary(exc, repo)
            return original(*args, **kwargs)

        typer.echo = echo

    def warm(self) -> None:
        """Compile what the cases will need (the persistent jax cache keeps it across workers)."""
        if {"requests", "cli"} & set(self.targets):
            self.runner.invoke(
                self.app, ["run", RUN_STRATEGY, "-n", "2", "--input-len", "4", "--output-len", "2", *FAST]
            )
        if "engine" in self.targets:
            for name in ENGINE_CONFIGS:
                self.engine(name)

    def engine(self, name: str):
        if name not in self.engines:
            from shardspec import compile, load
            from shardspec.runtime.engine import Engine

            path, model, extra, _ = ENGINE_CONFIGS[name]
            strategy = load(path, overrides={**SMALL_ENGINE, **extra})
            engine = Engine(compile(strategy.with_model(model) if model else strategy))
            engine.warmup()
            self.engines[name] = engine
        return self.engines[name]

    def run(self, case: dict) -> dict:
        tmp = Path(tempfile.mkdtemp(prefix=f"case{case['id']}-", dir=self.workdir))
        writer = None
        try:
            materialize(case.get("files", {}), tmp, self.repo)
            if "fifo_text" in case.get("checks", {}):
                writer = FifoWriter(tmp / "fifo", case["checks"]["fifo_text"])
            if case["target"] == "engine":
                return run_engine(self, case)
            return run_cli(self, case, tmp)
        except Exception as exc:  # a harness failure shows as an internal error in tools/fuzz/
            return {"kind": "harness", "exc": exc_summary(exc, self.repo)}
        finally:
            if writer:
                writer.close()
            shutil.rmtree(tmp, ignore_errors=True)


def worker_main(args) -> None:
    """The worker process: protocol on private copies of fds 0 and 1; the real ones are /dev/null and stderr."""
    inp = os.fdopen(os.dup(0), "r", encoding="utf-8")
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # a command reading /dev/stdin reads nothing, not our cases
    os.dup2(2, 1)
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    if args.jax_cache:
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    worker = Worker(Path(args.repo).resolve(), Path(args.workdir), args.targets.split(","))
    worker.warm()
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in inp:
        case = json.loads(line)
        result = worker.run(case)
        proto.write(json.dumps(result) + "\n")
        if rss_mb(os.getpid()) > args.recycle_mb:
            proto.write(json.dumps({"recycle": True}) + "\n")
            return
        for name in ENGINE_CONFIGS:  # rebuild a dropped engine now, outside any case's clock
            if "engine" in worker.targets and name not in worker.engines:
                worker.engine(name)
        proto.write(json.dumps({"ready": True}) + "\n")
