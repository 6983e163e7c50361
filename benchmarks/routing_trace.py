"""Routing on a lockstep-hostile trace: padding efficiency and steps per policy.

A few long prefills among many short requests at DP = 8, arriving over time.
Every DP rank of an SPMD step is padded to one stride, so one rank busy with a
long prompt makes the others pad. The scheduler and packer run for real; the
model is replaced by a fixed token (outputs run to max_tokens), so the figures
are deterministic counts, not times.

    python benchmarks/routing_trace.py [--ranks 8] [--long 8] [--short 1016] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from shardspec.runtime.packer import pack
from shardspec.runtime.request import Request
from shardspec.runtime.scheduler import DPScheduler
from shardspec.sizes import RuntimeSizes


def trace(n_long: int, n_short: int, seed: int = 0) -> list[tuple[int, Request]]:
    """(arrival step, request): long prompts spread among the short ones."""
    rng = np.random.default_rng(seed)
    kinds = np.array([True] * n_long + [False] * n_short)
    rng.shuffle(kinds)
    out = []
    for i, long in enumerate(kinds):
        n = int(rng.integers(1500, 3000)) if long else int(rng.integers(16, 96))
        m = 16 if long else int(rng.integers(16, 64))
        out.append((i // 8, Request(str(i), tuple(rng.integers(0, 1000, n).tolist()), max_tokens=m, ignore_eos=True)))
    return out


def simulate(sizes: RuntimeSizes, routing: str, requests, **scheduler_options) -> dict:
    scheduler = DPScheduler(sizes, routing=routing, **scheduler_options)
    pending, step, real, padded, finished = list(requests), 0, 0, 0, 0
    while pending or scheduler.has_unfinished():
        while pending and pending[0][0] <= step:
            scheduler.add_request(pending.pop(0)[1])
        schedule = scheduler.schedule()
        if len(schedule):
            packed = pack(schedule, sizes, check=False)  # the scheduler's steps, as the engine packs them
            real, padded = real + packed.real_tokens, padded + packed.padded_tokens
            finished += len(scheduler.update(schedule, np.full(len(packed.selector), 7)))
        step += 1
    assert finished == len(requests)
    return {
        "padding_efficiency": round(real / padded, 4),
        "steps": step,
        "real_tokens": real,
        "computed_tokens": padded,
    }


CONFIGS = {  # name -> (routing, balance_steps); None = the policy's own default
    "balanced": ("balanced", None),
    "least_tokens": ("least_tokens", None),
    "round_robin": ("round_robin", None),
    # Ablations: which half of `balanced` does the work.
    "balanced routing, lockstep steps": ("balanced", False),
    "round_robin routing, balanced steps": ("round_robin", True),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--long", type=int, default=8)
    parser.add_argument("--short", type=int, default=1016)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = RuntimeSizes(
        dp_ranks=args.ranks,
        page_size=16,
        pages_per_rank=2048,
        max_model_len=4096,
        max_num_seqs=64,
        max_num_batched_tokens=512,
    )
    results = {name: [] for name in CONFIGS}
    for seed in range(args.seeds):
        requests = trace(args.long, args.short, seed)
        for name, (routing, balance) in CONFIGS.items():
            results[name].append(simulate(sizes, routing, requests, balance_steps=balance))
    summary = {
        name: {"padding_efficiency": [r["padding_efficiency"] for r in runs], "steps": [r["steps"] for r in runs]}
        for name, runs in results.items()
    }
    ratios = [
        summary["balanced"]["padding_efficiency"][i]
        / max(summary[p]["padding_efficiency"][i] for p in ("least_tokens", "round_robin"))
        for i in range(args.seeds)
    ]
    out = {
        "benchmark": "routing_trace",
        "dp_ranks": args.ranks,
        "long": args.long,
        "short": args.short,
        "seeds": args.seeds,
        "results": summary,
        "balanced_vs_best_baseline": [round(r, 3) for r in ratios],
    }
    for name, r in summary.items():
        print(f"{name:>36}: padding efficiency {r['padding_efficiency']}, steps {r['steps']}", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
