"""What attention costs as max_model_len grows: the blockwise paged attention against the exact gather.

1. Decode: the same 32 short requests (8–15-token prompts, 32 tokens out) on
   llama3-tiny (its max_seq_len raised to 16,384) on one device, at
   runtime.max_model_len 512 and 16,384, with each attention, in one run.
   Tokens/s after warm-up, the best of REPEATS runs that alternate between the
   two lengths (the machine is shared and noisy), and the slowdown from 512
   to 16,384 (goal ≤ 1.2×).
2. Prefill: a lone prompt of 64 to 480 tokens on llama3-tiny (max_model_len
   512), ms to its first token with each attention (the best of REPEATS): how
   a prompt's cost grows with its length.
3. Prefill temp memory: the compiled prefill step's temp bytes per device for
   llama3-8b and llama3-70b shapes under strategies/tp.yaml, at max_model_len
   2,048 and 8,192 (goal: flat, and below the parameters' bytes per device).

    python benchmarks/attention_scale.py [--skip-memory]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shardspec import compile, load  # noqa: E402
from shardspec.hlo import _stored_state, batch_structs  # noqa: E402
from shardspec.models.presets import PRESETS  # noqa: E402
from shardspec.runtime.engine import Engine  # noqa: E402
from shardspec.runtime.paged_attention import attend_rank, attend_rank_reference  # noqa: E402
from shardspec.runtime.request import Request  # noqa: E402
from shardspec.runtime.step import Step  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ATTENTION = {"blockwise": attend_rank, "exact gather": attend_rank_reference}


def requests(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Request(str(i), tuple(rng.integers(0, 512, int(rng.integers(8, 16))).tolist()), max_tokens=32, ignore_eos=True)
        for i in range(n)
    ]


REPEATS = 3


def engine(max_model_len: int, attention) -> Engine:
    config = dataclasses.replace(PRESETS["llama3-tiny"], max_seq_len=16384)
    runtime = {"max_model_len": max_model_len, "max_num_seqs": 32, "max_num_batched_tokens": 512}
    strategy = load({"devices": 1, "parallelism": {"tensor": 1}, "runtime": runtime})
    out = Engine(compile(strategy, config, devices=jax.devices()[:1]), rank_attention=attention)
    out.warmup()
    return out


def serve(engine: Engine) -> tuple[float, list]:
    """(wall seconds, output tokens) of serving the requests once."""
    start = time.perf_counter()
    outputs = engine.generate(requests())
    return time.perf_counter() - start, [o.output_token_ids for o in outputs]


def decode(attention) -> dict:
    """Tokens/s at both lengths: the best of REPEATS runs, alternating between them."""
    engines = {n: engine(n, attention) for n in (512, 16384)}
    best, tokens = dict.fromkeys(engines, float("inf")), {}
    for _ in range(REPEATS):
        for n, e in engines.items():
            wall, tokens[n] = serve(e)
            best[n] = min(best[n], wall)
    assert tokens[512] == tokens[16384], "max_model_len changed the tokens"
    generated = sum(len(t) for t in tokens[512])
    return {str(n): {"tokens_per_s": round(generated / best[n], 1)} for n in engines}


PROMPTS = (64, 128, 256, 480)


def prefill(attention) -> dict:
    """Ms to a lone prompt's first token, at each length: the best of REPEATS."""
    e = engine(512, attention)
    rng = np.random.default_rng(0)
    best = {}
    for n in PROMPTS:
        times = []
        for _ in range(REPEATS):
            prompt = Request("p", tuple(rng.integers(0, 512, n).tolist()), max_tokens=1)
            start = time.perf_counter()
            e.generate([prompt])
            times.append(time.perf_counter() - start)
        best[str(n)] = round(min(times) * 1e3, 2)
    return best


def prefill_temp(model: str, max_model_len: int, attention) -> dict:
    plan = compile(
        load(ROOT / "strategies" / "tp.yaml", overrides={"runtime.max_model_len": str(max_model_len)}), model
    )
    step = Step(plan, plan.model.tree.graphdef, rank_attention=attention)
    caches = jax.eval_shape(step.new_kv_cache)
    prev = jax.ShapeDtypeStruct((plan.runtime.sampled_rows,), jnp.int32)
    structs = batch_structs(plan, plan.runtime.token_buckets[-1])
    compiled = step.lower(_stored_state(plan), caches, structs, prev).compile()
    params = sum(p.bytes_per_device for p in plan.params)
    return {"temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes), "param_bytes": params}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    out: dict = {"benchmark": "attention_scale", "decode": {}, "prefill_ms": {}, "prefill_temp": {}}
    for name, fn in ATTENTION.items():
        runs = decode(fn)
        short, long = runs["512"], runs["16384"]
        slowdown = round(short["tokens_per_s"] / long["tokens_per_s"], 2)
        out["decode"][name] = {**runs, "slowdown_16384_vs_512": slowdown}
        print(
            f"decode, {name}: {short['tokens_per_s']} tok/s at 512, {long['tokens_per_s']} at 16,384 "
            f"({slowdown}x slower)",
            file=sys.stderr,
        )
    for name, fn in ATTENTION.items():
        out["prefill_ms"][name] = prefill(fn)
        print(f"prefill, {name}: ms to the first token {out['prefill_ms'][name]}", file=sys.stderr)
    if not args.skip_memory:
        for model in ("llama3-8b", "llama3-70b"):
            for name, fn in ATTENTION.items():
                row = {str(n): prefill_temp(model, n, fn) for n in (2048, 8192)}
                out["prefill_temp"].setdefault(model, {})[name] = row
                print(
                    f"prefill temp, {model}, {name}: "
                    + ", ".join(f"{n}: {r['temp_bytes'] / 2**30:.2f} GiB" for n, r in row.items())
                    + f" (params {row['8192']['param_bytes'] / 2**30:.2f} GiB)",
                    file=sys.stderr,
                )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
