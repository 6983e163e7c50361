"""Prefix caching and routing on traffic that repeats itself: what is computed, per policy.

Three traces at DP = 8, side by side in one run:
- shared system prompt: every request starts with the same 1,024 tokens;
- multi-turn chats: each turn resends the conversation (prompt and answers so far)
  plus a new message, a little after the previous turn finished;
- GRPO: groups of 8–16 samples of one prompt arriving together, groups over time.

Columns: no cache (`balanced`, kv_cache.prefix_caching off), and with the cache
the reference system's `cache_first` and `least_load`, and `balanced`. The
scheduler and packer run for real on a clock of modelled step times
(serving_sim.py), under each table routing_time.py measures (or --costs).
Counts are exact: prompt tokens computed and taken from the cache, steps,
padding efficiency; times are modelled from the table.

    python benchmarks/prefix_cache.py [--models llama3-tiny,llama3-small] [--costs table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from routing_time import tables  # noqa: E402
from serving_sim import Config, simulate  # noqa: E402

from shardspec.runtime.request import Output, Request  # noqa: E402
from shardspec.sizes import RuntimeSizes  # noqa: E402

SIZES = RuntimeSizes(
    dp_ranks=8, page_size=16, pages_per_rank=2048, max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=512
)
CONFIGS = {
    "no cache": Config("balanced", prefix_caching=False),
    "cache_first": Config("cache_first"),
    "least_load": Config("least_load"),
    "balanced": Config("balanced"),
    # Ablation: balanced routing with the baselines' full-budget lockstep steps.
    "balanced, lockstep steps": Config("balanced", timed_steps=False, balance_steps=False),
}


def _tokens(rng, n) -> tuple[int, ...]:
    return tuple(rng.integers(0, 1000, n).tolist())


def system_prompt(rng, costs) -> tuple[list, None]:
    system = _tokens(rng, 1024)
    every = costs[512] / 16
    return [
        (i * every, Request(f"sys{i}", system + _tokens(rng, int(rng.integers(16, 96))), int(rng.integers(16, 64))))
        for i in range(640)
    ], None


def multi_turn(rng, costs, turns=4):
    """96 chats; a turn's follow-up arrives 5 cheapest steps after it finishes."""
    chats = {}

    def follow_up(out: Output):
        chat, turn = out.id.rsplit(".", 1)
        if int(turn) + 1 >= turns:
            return []
        prompt = out.prompt_token_ids + out.output_token_ids + _tokens(rng, int(rng.integers(16, 64)))
        return [(5 * costs[8], Request(f"{chat}.{int(turn) + 1}", prompt, int(rng.integers(32, 96))))]

    first = []
    for c in range(96):
        chats[c] = _tokens(rng, int(rng.integers(64, 256)))
        first.append((c * costs[512] / 4, Request(f"chat{c}.0", chats[c], int(rng.integers(32, 96)))))
    return first, follow_up


def grpo(rng, costs):
    """48 prompts; each group of 8–16 samples arrives at once, a group every 2 full steps."""
    out = []
    for g in range(48):
        prompt, n = _tokens(rng, int(rng.integers(256, 1024))), int(rng.integers(8, 17))
        out += [(g * 2 * costs[512], Request(f"g{g}.{i}", prompt, int(rng.integers(64, 192)))) for i in range(n)]
    return out, None


TRACES = {"shared system prompt": system_prompt, "multi-turn chats": multi_turn, "GRPO groups": grpo}


def run_table(costs: dict[int, float]) -> dict:
    results: dict[str, dict] = {}
    for trace_name, make in TRACES.items():
        for name, config in CONFIGS.items():
            arrivals, follow_up = make(np.random.default_rng(0), costs)
            r = simulate(SIZES, [(at, _ignore_eos(q)) for at, q in arrivals], config, costs, follow_up)
            del r["strides"]
            results.setdefault(trace_name, {})[name] = r
            print(f"{trace_name:>22} {name:>12}: {r}", file=sys.stderr)
    return {
        "step_costs_ms": {str(k): v for k, v in costs.items()},
        "results": results,
        "computed_prompt_tokens_no_cache_over_balanced": {
            t: round(runs["no cache"]["computed_prompt_tokens"] / runs["balanced"]["computed_prompt_tokens"], 2)
            for t, runs in results.items()
        },
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama3-tiny,llama3-small")
    parser.add_argument("--costs", type=Path, help="a {bucket: ms} JSON table instead of measuring")
    args = parser.parse_args(argv)
    args.no_replay = True
    out = {
        "benchmark": "prefix_cache",
        "dp_ranks": SIZES.dp_ranks,
        "step_costs": "given" if args.costs else "measured at warm-up of strategies/dp.yaml",
        "tables": {name: run_table(costs) for name, (costs, _) in tables(args).items()},
    }
    print(json.dumps(out))
    return out


def _ignore_eos(request: Request) -> Request:
    return Request(request.id, request.prompt_token_ids, max_tokens=request.max_tokens, ignore_eos=True)


if __name__ == "__main__":
    main()
