"""Run every benchmark, keep their JSON, draw the plots and write BENCHMARKS.md.

    pip install -e '.[bench]' && python benchmarks/run_all.py [--only NAME ...]

Each benchmark is a script in this folder that prints one JSON object; results
land in benchmarks/results/NAME.json and BENCHMARKS.md is regenerated from all
results present, so a partial rerun (--only) keeps the other figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = [
    "host_cost",
    "request_check",
    "compile_once",
    "attention_scale",
    "mla",
    "vs_transformers",
    "moe_flops",
    "e2e_tokens",
    "sampling_features",
    "admission",
    "serve_http",
    "routing_trace",
    "routing_time",
    "prefix_cache",
    "explain_latency",
    "suggest",
    "serve_strategies",
    "memory_per_device",
    "load_checkpoint",
]


def run(name: str) -> None:
    script = HERE / f"{name}.py"
    if not script.exists():
        return
    print(f"running {name} ...", file=sys.stderr)
    done = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=BENCHMARKS)
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    for name in args.only:
        run(name)
    from report import write_report

    write_report(RESULTS, HERE.parent / "BENCHMARKS.md")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
