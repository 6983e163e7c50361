"""Latency of `shardspec explain` for llama3-70b shapes, as a user runs it.

Times the whole command in a fresh process (Python start, imports, compile of
the plan on an abstract mesh, printing), best and median of several runs, and
the in-process compile + explain alone. Prints one JSON object.

    python benchmarks/explain_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGY = ROOT / "strategies" / "attention_dp.yaml"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "shardspec.cli.main", "explain", str(STRATEGY), "--model", "llama3-70b"]
    wall = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall.append(time.perf_counter() - start)

    from shardspec import compile, explain, load

    strategy = load(STRATEGY)
    inner = []
    for _ in range(args.runs):
        start = time.perf_counter()
        explain(compile(strategy, "llama3-70b", abstract_mesh=True))
        inner.append(time.perf_counter() - start)
    out = {
        "benchmark": "explain_latency",
        "model": "llama3-70b",
        "strategy": STRATEGY.name,
        "command_s": {"best": round(min(wall), 3), "median": round(statistics.median(wall), 3)},
        "compile_and_explain_s": {"best": round(min(inner), 4), "median": round(statistics.median(inner), 4)},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
