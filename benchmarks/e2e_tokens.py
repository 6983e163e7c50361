"""End-to-end serving tokens/s of llama3-small and mixtral-tiny under strategies/attention_dp.yaml.

48 synthetic requests (prompts of 8–200 tokens, 8–48 out, EOS ignored) on 8
simulated CPU devices, tokens/s after warm-up, best of REPEATS runs. The
script uses only the engine's public API and the installed tree's own
strategy file, so the same file measures an older tree of the project too
(for before/after figures, run it under each).

    python benchmarks/e2e_tokens.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402

import shardspec  # noqa: E402
from shardspec import compile, load  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402
from shardspec.runtime.request import Request  # noqa: E402

ROOT = Path(shardspec.__file__).resolve().parent.parent  # the measured tree's own strategies
MODELS, REPEATS = ("llama3-small", "mixtral-tiny"), 3


def requests(vocab: int, n: int = 48, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [
        Request(
            str(i),
            tuple(rng.integers(0, vocab, int(rng.integers(8, 201))).tolist()),
            max_tokens=int(rng.integers(8, 49)),
            ignore_eos=True,
        )
        for i in range(n)
    ]


def measure(model: str) -> dict:
    strategy = load(ROOT / "strategies" / "attention_dp.yaml").with_model(model)
    engine = Engine(compile(strategy))
    engine.warmup()
    vocab = (
        engine.plan.model.geometry.vocab_size
        if hasattr(engine.plan.model, "geometry")
        else (engine.plan.model.vocab_size)
    )  # an older tree's plan.model is the config
    batch = requests(vocab)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        outputs = engine.generate(batch)
        best = min(best, time.perf_counter() - start)
    tokens = sum(len(o.output_token_ids) for o in outputs)
    return {"tokens_per_s": round(tokens / best, 1), "generated_tokens": tokens}


def main() -> dict:
    out = {"benchmark": "e2e_tokens", "strategy": "attention_dp.yaml", "results": {}}
    for model in MODELS:
        out["results"][model] = r = measure(model)
        print(f"{model}: {r['tokens_per_s']} tok/s", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
