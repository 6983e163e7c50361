"""Compile once: what a second engine, and a second `shardspec run`, compile and cost.

In one process (JAX's persistent compilation cache off, so only the in-process
sharing counts): an Engine on a strategy is built and warmed up (every token
bucket compiled), then an identical one from a fresh `compile()` of the same
strategy, then one with async scheduling and routing changed (the same
program). Each is timed from its construction to the end of its warm-up, and
XLA's backend compiles during it are counted (`jax.monitoring` events).

Then the command line: `shardspec run STRATEGY --json` in a fresh process,
`--runs` times with the persistent cache off, and as many times with an empty
cache directory (the first run fills it, the others read it). A run's start
is its wall time less the serving time it reports (`wall_s`): Python, imports,
the plan, parameters and the warm-up.

    python benchmarks/compile_once.py [--strategy strategies/attention_dp.yaml] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGY = ROOT / "strategies" / "attention_dp.yaml"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def in_process(strategy: Path) -> dict:
    """Three engines in turn: the first compiles, the other two find its programs."""
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    from shardspec import compile, load
    from shardspec.runtime.engine import Engine

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(seconds) if event == COMPILE_EVENT else None
    )
    variants = {
        "first": {},
        "second (same strategy)": {},
        "third (sync, round_robin)": {"runtime.async_scheduling": "false", "runtime.routing": "round_robin"},
    }
    out = {}
    for name, overrides in variants.items():
        before, start = len(compiles), time.perf_counter()
        engine = Engine(compile(load(strategy, overrides=overrides)))
        engine.warmup()
        out[name] = {
            "ready_s": round(time.perf_counter() - start, 3),
            "xla_compiles": len(compiles) - before,
            "step_programs": engine.metrics.compiles,
        }
    first = out["first"]["ready_s"]
    for name in variants:
        out[name]["of_first"] = round(out[name]["ready_s"] / first, 4)
    return out


def command_runs(strategy: Path, runs: int) -> dict:
    """`shardspec run` in fresh processes, without and with the persistent cache."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, setting in (("cache off", "off"), ("cache on", cache)):
            out[label] = [_run_once(strategy, setting) for _ in range(runs)]
        out["cache entries"] = len(os.listdir(cache))
    off = min(r["start_s"] for r in out["cache off"])
    warm = min(r["start_s"] for r in out["cache on"][1:])
    out["start, cache off ÷ second run with the cache"] = round(off / warm, 2)
    return out


def _run_once(strategy: Path, cache: str) -> dict:
    command = [sys.executable, "-m", "shardspec.cli.main", "--compilation-cache", cache, "run", str(strategy)]
    start = time.perf_counter()
    done = subprocess.run([*command, "--json", "-n", "16"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 3), "start_s": round(wall - metrics["wall_s"], 3), "serve_s": metrics["wall_s"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", type=Path, default=STRATEGY)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    out = {
        "benchmark": "compile_once",
        "strategy": str(args.strategy.relative_to(ROOT)) if args.strategy.is_absolute() else str(args.strategy),
        "command": command_runs(args.strategy, max(2, args.runs)),
    }
    # The in-process part in a child process of its own: this one has imported nothing of jax.
    child = [sys.executable, __file__, "--in-process", str(args.strategy)]
    done = subprocess.run(child, check=True, capture_output=True, text=True)
    out["engines"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--in-process":
        print(json.dumps(in_process(Path(sys.argv[2]))))
    else:
        main()
