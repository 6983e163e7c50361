"""Routing for throughput: modelled time, steps, padding and measured time per policy.

Two traces at DP = 8, side by side in one run: the lockstep-hostile trace of
routing_trace.py (a few 1,500–3,000-token prompts among ~1,000 short
requests, 8 arriving at a time) and a steady stream (800 requests, 1 in 16
prompts long, 8 arriving in the time of one full step). The scheduler and packer run for
real on a clock of modelled step times (serving_sim.py), under each
per-bucket table: measured at warm-up of strategies/dp.yaml (8 simulated CPU
devices) with each model of --models, whose steps range from mostly fixed
cost (llama3-tiny) to mostly per token (llama3-small), or read from --costs.
Measured time: every step of a policy's schedule (seed 0) replayed as the
compiled step of the same stride, on the first model's engine (the policies in
turn, 3 rounds, the median).

    python benchmarks/routing_time.py [--seeds 3] [--models llama3-tiny,llama3-small]
                                      [--costs table.json] [--no-replay]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from routing_trace import trace as lockstep_trace  # noqa: E402
from serving_sim import Config, replay, simulate  # noqa: E402

from shardspec import compile, load  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402
from shardspec.runtime.request import Request  # noqa: E402
from shardspec.sizes import RuntimeSizes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = RuntimeSizes(
    dp_ranks=8, page_size=16, pages_per_rank=2048, max_model_len=4096, max_num_seqs=64, max_num_batched_tokens=512
)
CONFIGS = {
    "balanced": Config("balanced"),
    "least_load": Config("least_load"),
    "cache_first": Config("cache_first"),
    "least_tokens": Config("least_tokens"),
    "round_robin": Config("round_robin"),
    # Ablations: balanced routing with lockstep steps, and with the previous step
    # forming (padding, not time).
    "balanced, lockstep steps": Config("balanced", timed_steps=False, balance_steps=False),
    "balanced, padding-balanced steps": Config("balanced", timed_steps=False),
}
BASELINES = ("least_load", "cache_first", "least_tokens", "round_robin")
REPLAY_ROUNDS = 3


def steady_stream(n: int, every_ms: float, seed: int) -> list[tuple[float, Request]]:
    """`n` requests, one every `every_ms`; every 16th a long prompt."""
    rng = np.random.default_rng(1000 + seed)
    out = []
    for i in range(n):
        long = rng.random() < 1 / 16
        prompt = int(rng.integers(1000, 2000)) if long else int(rng.integers(16, 128))
        out.append(
            (
                i * every_ms,
                Request(
                    f"s{i}",
                    tuple(rng.integers(0, 1000, prompt).tolist()),
                    max_tokens=int(rng.integers(16, 96)),
                    ignore_eos=True,
                ),
            )
        )
    return out


def traces(seed: int, costs: dict[int, float]) -> dict[str, list[tuple[float, Request]]]:
    step_ms = costs[SIZES.token_buckets[0]]  # the cheapest step: 8 requests arrive per one of them
    lockstep = [(arrival * step_ms, r) for arrival, r in lockstep_trace(8, 1016, seed)]
    return {"lockstep-hostile": lockstep, "steady stream": steady_stream(800, costs[512] / 8, seed)}


def measured_costs(model: str) -> tuple[dict[int, float], Engine]:
    """`model`'s step-cost table under strategies/dp.yaml, measured at warm-up, and its engine."""
    engine = Engine(compile(load(ROOT / "strategies" / "dp.yaml").with_model(model)))
    engine.warmup()
    return dict(engine.metrics.step_costs_ms), engine


def tables(args) -> dict[str, tuple[dict[int, float], Engine | None]]:
    """{table name: (costs, engine to replay on or None)}."""
    if args.costs:
        return {args.costs.stem: ({int(k): float(v) for k, v in json.loads(args.costs.read_text()).items()}, None)}
    out = {}
    for i, model in enumerate(args.models.split(",")):
        costs, engine = measured_costs(model)
        out[model] = (costs, engine if i == 0 and not args.no_replay else None)
    return out


def run_table(costs: dict[int, float], engine: Engine | None, seeds: int) -> dict:
    results: dict[str, dict[str, dict[str, list]]] = {}
    schedules = {}  # (trace, policy) -> seed 0's strides, to replay
    for seed in range(seeds):
        for trace_name, arrivals in traces(seed, costs).items():
            for name, config in CONFIGS.items():
                r = simulate(SIZES, arrivals, config, costs)
                if seed == 0:
                    schedules[trace_name, name] = r["strides"]
                del r["strides"]
                for key, value in r.items():
                    results.setdefault(trace_name, {}).setdefault(name, {}).setdefault(key, []).append(value)
                print(f"seed {seed} {trace_name:>17} {name:>34}: {r}", file=sys.stderr)
    if engine is not None:
        # The policies' schedules in turn, REPLAY_ROUNDS times: each gets the machine's
        # noise of every round; the median is reported.
        times = {key: [] for key in schedules}
        for _ in range(REPLAY_ROUNDS):
            for key, strides in schedules.items():
                times[key].append(replay(engine, strides))
        for (trace_name, name), runs in times.items():
            results[trace_name][name]["replayed_s"] = [round(statistics.median(runs), 3)]
    speedup = {
        trace_name: {
            metric: [
                round(min(runs[b][metric][i] for b in BASELINES) / runs["balanced"][metric][i], 3) for i in range(seeds)
            ]
            for metric in ("modelled_s", "mean_latency_s", "mean_ttft_s")
        }
        for trace_name, runs in results.items()
    }
    return {
        "step_costs_ms": {str(k): v for k, v in costs.items()},
        "results": results,
        "balanced_speedup_vs_best_baseline": speedup,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="llama3-tiny,llama3-small")
    parser.add_argument("--costs", type=Path, help="a {bucket: ms} JSON table instead of measuring")
    parser.add_argument("--no-replay", action="store_true", help="skip the measured replay")
    args = parser.parse_args(argv)
    out = {
        "benchmark": "routing_time",
        "dp_ranks": SIZES.dp_ranks,
        "seeds": args.seeds,
        "step_costs": "given" if args.costs else "measured at warm-up of strategies/dp.yaml",
        "tables": {name: run_table(costs, engine, args.seeds) for name, (costs, engine) in tables(args).items()},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
