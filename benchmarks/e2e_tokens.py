"""End-to-end serving tokens/s of llama3-small and mixtral-tiny under strategies/attention_dp.yaml.

48 synthetic requests (prompts of 8–200 tokens, 8–48 out, EOS ignored) on 8
simulated CPU devices, tokens/s after warm-up, best of REPEATS runs. The
script uses only the engine's public API and the installed tree's own
strategy file, so the same file measures an older tree of the project too:
with `--before PYTHON` (an interpreter that has an older checkout installed)
each model runs under both, alternately, and the JSON holds both figures and
their ratio, measured side by side.

    python benchmarks/e2e_tokens.py [--before OLD_VENV/bin/python]
"""

from __future__ import annotations

import argparse
import json
import subprocess
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


def commit(root: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or None


def run_one(python: str, model: str) -> dict:
    """This script under `python`, for one model (its own process: one tree per process)."""
    done = subprocess.run([python, __file__, "--model", model], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="an interpreter with an older checkout of the project installed")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = parser.parse_args(argv)
    if args.model:
        out = {**measure(args.model), "commit": commit(ROOT)}
        print(json.dumps(out))
        return out
    out = {"benchmark": "e2e_tokens", "strategy": "attention_dp.yaml", "results": {}}
    for model in MODELS:
        runs = {"after": [], "before": []}
        for _ in range(2 if args.before else 1):  # alternate: the machine's load changes over minutes
            runs["after"].append(run_one(sys.executable, model))
            if args.before:
                runs["before"].append(run_one(args.before, model))
        r = {k: max(v, key=lambda x: x["tokens_per_s"]) for k, v in runs.items() if v}
        if args.before:
            r["after_over_before"] = round(r["after"]["tokens_per_s"] / r["before"]["tokens_per_s"], 2)
        out["results"][model] = r
        print(f"{model}: {json.dumps(r)}", file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
