"""Tokens/s and padding efficiency per strategy and per routing policy.

One process, 8 simulated CPU devices, the same synthetic requests for every
configuration. Prints one JSON object.

    python benchmarks/serve_strategies.py [--requests 64] [--input-len 8:160] [--output-len 8:48]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

from shardspec import compile, load  # noqa: E402
from shardspec.cli.run import synthetic_requests  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUTINGS = ("balanced", "least_tokens", "round_robin")


def _span(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    return int(low), int(high or low)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--input-len", default="8:160")
    parser.add_argument("--output-len", default="8:48")
    parser.add_argument("--model", default="llama3-tiny")
    args = parser.parse_args(argv)
    results = {}
    for path in sorted((ROOT / "strategies").glob("*.yaml")):
        for routing in ROUTINGS:
            strategy = load(path, overrides={"runtime.routing": routing}).with_model(args.model)
            plan = compile(strategy)
            requests = synthetic_requests(args.requests, _span(args.input_len), _span(args.output_len),
                                          plan.model.vocab_size, seed=0)
            engine = Engine(plan)
            engine.warmup()
            engine.generate(requests)
            m = engine.metrics.to_json()
            results[f"{path.stem}/{routing}"] = {k: m[k] for k in (
                "tokens_per_s", "padding_efficiency", "steps", "compiles", "max_kv_usage",
                "host_overhead_fraction")}
            print(f"{path.stem:>14} {routing:>12}: {m['tokens_per_s']:8.1f} tok/s, padding efficiency "
                  f"{m['padding_efficiency']:.3f}, {m['steps']} steps", file=sys.stderr)
    out = {"benchmark": "serve_strategies", "model": args.model, "devices": 8, "requests": args.requests,
           "input_len": args.input_len, "output_len": args.output_len, "results": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
