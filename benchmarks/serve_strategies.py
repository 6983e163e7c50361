"""End-to-end serving: tokens/s and padding efficiency per strategy, against one device.

One process, 8 simulated CPU devices, the same synthetic requests for every
configuration: one device (the baseline), every file in strategies/ with the
`balanced` policy, and the attention-DP strategy with each baseline policy.
Tokens/s on a shared 2-core CPU is noisy: read the ratios to the 1-device run
of the same process, and the deterministic columns (padding efficiency, steps).
Prints one JSON object.

    python benchmarks/serve_strategies.py [--model llama3-small] [--requests 48]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

from shardspec import compile, load  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402
from shardspec.runtime.workload import Synthetic, synthetic_requests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ROOT / "strategies"


def configs():
    """(name, strategy file, overrides)."""
    yield "1 device", STRATEGIES / "tp.yaml", {"parallelism.tensor": "1", "devices": "1"}
    for path in sorted(STRATEGIES.glob("*.yaml")):
        if not load(path).multihost and (load(path).model or "").startswith("llama3"):
            yield path.stem, path, {}
    for routing in ("least_tokens", "round_robin"):
        yield f"attention_dp/{routing}", STRATEGIES / "attention_dp.yaml", {"runtime.routing": routing}


def serve(path, overrides, model, requests) -> dict:
    strategy = load(path, overrides={"runtime.max_num_batched_tokens": "256", **overrides}).with_model(model)
    engine = Engine(compile(strategy))
    engine.warmup()
    engine.generate(requests)
    m = engine.metrics.to_json()
    return {
        k: m[k]
        for k in (
            "tokens_per_s",
            "padding_efficiency",
            "steps",
            "compiles",
            "max_kv_usage",
            "host_overhead_fraction",
            "wall_s",
        )
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-small")
    parser.add_argument("--requests", type=int, default=48)
    args = parser.parse_args(argv)
    requests = None
    results = {}
    for name, path, overrides in configs():
        if requests is None:
            vocab = compile(load(path).with_model(args.model), abstract_mesh=True).model.geometry.vocab_size
            requests = synthetic_requests(Synthetic(args.requests, (8, 200), (8, 48), seed=0), vocab)
        results[name] = r = serve(path, overrides, args.model, requests)
        r["tokens_per_s_vs_1_device"] = round(r["tokens_per_s"] / results["1 device"]["tokens_per_s"], 3)
        print(
            f"{name:>26}: {r['tokens_per_s']:8.1f} tok/s ({r['tokens_per_s_vs_1_device']}x), padding "
            f"efficiency {r['padding_efficiency']:.3f}, {r['steps']} steps",
            file=sys.stderr,
        )
    out = {
        "benchmark": "serve_strategies",
        "model": args.model,
        "devices": 8,
        "requests": args.requests,
        "input_len": "8:200",
        "output_len": "8:48",
        "results": results,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
